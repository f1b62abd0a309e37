"""A PNG chart of a result document; needs matplotlib (the `chart` extra), skipped without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHART_NAME = "latest.png"
ZMQ_COLOR = "#d9822b"  # zmqbalance rows stand out from the systems they are compared with
OTHER_COLOR = "#4878a8"


def draw(result: dict[str, Any], directory: Path) -> str:
    """Draw wall-time medians with min-max bars, one panel per wall workload; return a note."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install -e '.[chart]')"

    panels: dict[str, list[dict[str, Any]]] = {}
    for row in result["rows"]:
        if row["measure"] == "wall" and row["summary"] and row["summary"]["wall_s"]:
            panels.setdefault(row["workload"], []).append(row)
    if not panels:
        return "chart skipped: no wall-time rows in this run"

    height = 2.4 * len(panels) + 0.6
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, height), squeeze=False)
    for axis, (workload, rows) in zip(axes[:, 0], panels.items(), strict=True):
        stats = [r["summary"]["wall_s"] for r in rows]
        medians = [s["median"] for s in stats]
        below = [s["median"] - s["min"] for s in stats]
        above = [s["max"] - s["median"] for s in stats]
        axis.barh(
            [r["label"] for r in rows],
            medians,
            xerr=[below, above],
            color=[ZMQ_COLOR if r["system"].startswith("zmq") else OTHER_COLOR for r in rows],
            capsize=3,
        )
        axis.set_title(workload, loc="left", fontsize=10)
        axis.set_xlabel("wall time, s (median, min-max)")
        axis.invert_yaxis()
    figure.suptitle(f"{result['command']}  ({result['started']})", fontsize=9)
    figure.tight_layout()
    path = directory / CHART_NAME
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return f"chart: {path}"
