"""Summaries of the runs: medians with their spread, ratios to the baseline, text and JSON.

Every figure is a median over the repetitions of a row, shown with min-max. The ratio column
divides a row's median wall time by zmqbalance in memory's on the same workload, so above 1
means slower than zmqbalance. On the latency workload it divides p99 latencies instead.
Server CPU is in seconds per 1,000 changes, summed over all threads of the server process.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from bench.systems import BASELINE, REDIS_SERVER, SYSTEMS
from bench.workloads import WORKLOADS

SCHEMA_VERSION = 1


def row_key(workload: str, system: str, variant: dict[str, int] | None) -> str:
    if not variant:
        return f"{workload}/{system}"
    return f"{workload}/{system}/workers={variant['workers']},clients={variant['clients']}"


def spread(values: list[float]) -> dict[str, float] | None:
    """Return median, min, max and the quartiles of `values`, or None when there are none."""
    if not values:
        return None
    quartiles = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "q1": quartiles[0],
        "q3": quartiles[2],
        "n": len(values),
    }


def describe_run(run: dict[str, Any]) -> str:
    if run["errors"]:
        return f"FAILED: {run['errors'][0]}"
    text = f"{run['wall_s']:.3f} s, {run['changes']:,} changes"
    if run["changes_per_s"]:
        text += f", {run['changes_per_s']:,.0f}/s"
    if run.get("latency_us"):
        text += f", p99 {run['latency_us']['p99']:.0f} us"
    if run["timed_out"]:
        text += ", stopped at the time budget"
    check = run["check"]
    if check is not None:
        text += ", check ok" if check["ok"] else f", CHECK FAILED {check}"
    return text


def summarize_row(row: dict[str, Any]) -> dict[str, Any]:
    runs = [r for r in row["runs"] if not r["errors"]]
    cpu_per_1000 = [
        r["server_cpu_s"] / r["changes"] * 1000
        for r in runs
        if r["server_cpu_s"] is not None and r["changes"]
    ]
    summary: dict[str, Any] = {
        "wall_s": spread([r["wall_s"] for r in runs]),
        "changes_per_s": spread([r["changes_per_s"] for r in runs if r["changes_per_s"]]),
        "server_cpu_s_per_1000": spread(cpu_per_1000),
        "client_cpu_s_per_1000": spread(
            [r["client_cpu_s"] / r["changes"] * 1000 for r in runs if r["changes"]]
        ),
        "incomplete_runs": sum(1 for r in runs if r["timed_out"]),
    }
    for name in ("p50", "p99", "p99.9"):
        summary[f"latency_{name}_us"] = spread(
            [r["latency_us"][name] for r in runs if r.get("latency_us")]
        )
    summary["check"] = _summarize_checks(runs)
    return summary


def _summarize_checks(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    checks = [r["check"] for r in runs if r["check"] is not None]
    if not checks:
        return None
    has_counts = checks[0]["lost"] is not None
    return {
        "runs_checked": len(checks),
        "runs_ok": sum(1 for c in checks if c["ok"]),
        "wrong_balances": sum(c["wrong_balances"] for c in checks),
        "lost": sum(c["lost"] for c in checks) if has_counts else None,
        "doubled": sum(c["doubled"] for c in checks) if has_counts else None,
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Set each row's `ratio_to_baseline` from the baseline row of the same workload.

    A throughput workload names its own baseline and divides changes per second, so above 1
    means faster than the baseline there.
    """
    baselines = {}
    for row in rows:
        baseline = WORKLOADS[row["workload"]].baseline or BASELINE
        if row["system"] == baseline and not row["variant"]:
            baselines[row["workload"]] = row
    for row in rows:
        row["ratio_to_baseline"] = None
        base = baselines.get(row["workload"])
        if base is None or row["variant"] or row["summary"] is None:
            continue
        # A run cut at the time budget sent fewer changes, so its time has no fair ratio.
        if row["summary"]["incomplete_runs"] or base["summary"]["incomplete_runs"]:
            continue
        field = {"latency": "latency_p99_us", "throughput": "changes_per_s"}.get(
            row["measure"], "wall_s"
        )
        mine, theirs = row["summary"][field], base["summary"] and base["summary"][field]
        if mine and theirs and theirs["median"] > 0:
            row["ratio_to_baseline"] = mine["median"] / theirs["median"]


def temp_filesystem() -> str:
    """Return the temporary directory and the type of the filesystem it is on, from /proc/mounts.

    The durable rows fsync there, so its filesystem matters to their numbers.
    """
    directory = os.path.realpath(tempfile.gettempdir())
    best, fstype = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            mount_point, kind = line.split()[1:3]
            inside = directory == mount_point or directory.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) > len(best):
                best, fstype = mount_point, kind
    except (OSError, ValueError):
        pass
    return f"{directory} on {fstype}"


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages from /proc/loadavg, or "unknown"."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def software() -> dict[str, str]:
    """Return the versions of the servers and client libraries the rows depend on."""
    versions = {"pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version()}
    for package in ("msgpack", "redis", "pottery"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        done = subprocess.run(
            [REDIS_SERVER, "--version"], capture_output=True, text=True, timeout=10
        )
        # "Redis server v=7.0.15 sha=... malloc=..." -> "7.0.15"
        fields = [f for f in done.stdout.split() if f.startswith("v=")]
        versions["redis-server"] = fields[0][2:] if fields else done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        versions["redis-server"] = "not installed"
    return versions


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "tmp_fs": temp_filesystem(),
        "software": software(),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def build(
    rows: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    argv: list[str],
    started: float,
    load_at_start: str,
) -> dict[str, Any]:
    """Return the whole result document: machine, options, and every row with its summary."""
    row_list = sorted(rows.values(), key=_row_order)
    for row in row_list:
        row["summary"] = summarize_row(row) if row["runs"] else None
    add_ratios(row_list)
    return {
        "schema": SCHEMA_VERSION,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "command": " ".join(["python3 -m bench", *argv]),
        "machine": machine(),
        # Other processes on the machine slow the wall times; server CPU per change less so.
        "load_average": {"start": load_at_start, "end": load_average()},
        "options": {
            "systems": args.system_list,
            "workloads": args.workload_list,
            "repeat": args.repeat,
            "quick": args.quick,
        },
        "baseline": BASELINE,
        "rows": row_list,
    }


def _row_order(row: dict[str, Any]) -> tuple[int, int, int, int]:
    """Sort rows as the registries list them, whatever order the rotated schedule ran them in."""
    variant = row["variant"]
    return (
        list(WORKLOADS).index(row["workload"]),
        list(SYSTEMS).index(row["system"]),
        variant.get("workers", 0),
        variant.get("clients", 0),
    )


def write_json(result: dict[str, Any], directory: Path) -> list[Path]:
    """Write the result as a timestamped file and as latest.json; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = result["started"].replace(":", "").replace("-", "")
    text = json.dumps(result, indent=1, sort_keys=False) + "\n"
    paths = [directory / f"bench-{stamp}.json", directory / "latest.json"]
    for path in paths:
        path.write_text(text)
    return paths


def render_text(result: dict[str, Any]) -> str:
    from bench.tables import render_tables

    return render_tables(result, markdown=False)
