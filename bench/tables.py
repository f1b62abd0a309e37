"""Tables of a result document, as aligned text for the terminal or as Markdown for docs."""

from __future__ import annotations

from typing import Any

from bench.workloads import WORKLOADS


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _median(summary: dict[str, Any] | None, field: str) -> float | None:
    stats = summary and summary.get(field)
    return stats["median"] if stats else None


def _range(summary: dict[str, Any] | None, field: str, digits: int) -> str:
    stats = summary and summary.get(field)
    if not stats:
        return "-"
    return f"{stats['min']:,.{digits}f}-{stats['max']:,.{digits}f}"


def _ratio(row: dict[str, Any]) -> str:
    ratio = row.get("ratio_to_baseline")
    return "-" if ratio is None else f"{ratio:.2f}x"


def _check(summary: dict[str, Any] | None) -> str:
    check = summary and summary.get("check")
    incomplete = summary["incomplete_runs"] if summary else 0
    prefix = f"{incomplete} run(s) cut at the time budget, " if incomplete else ""
    if not check:
        return prefix + "n/a"
    parts = [f"{prefix}{check['runs_ok']}/{check['runs_checked']} ok"]
    if check["wrong_balances"]:
        parts.append(f"{check['wrong_balances']} wrong balances")
    if check["lost"] is not None:
        parts.append(f"{check['lost']} lost, {check['doubled']} doubled")
    return ", ".join(parts)


def _wall_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["system", "wall s", "min-max", "changes/s", "vs zmq-mem", "srv CPU s/1k", "p99 us",
              "check"]  # fmt: skip
    body = []
    for row in rows:
        s = row["summary"]
        body.append([
            row["label"], _num(_median(s, "wall_s")), _range(s, "wall_s", 3),
            _num(_median(s, "changes_per_s"), 0), _ratio(row),
            _num(_median(s, "server_cpu_s_per_1000")), _num(_median(s, "latency_p99_us"), 0),
            _check(s),
        ])  # fmt: skip
    return header, body


def _latency_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["system", "p50 us", "p99 us", "p99 min-max", "p99.9 us", "p99 vs zmq-mem",
              "srv CPU s/1k", "check"]  # fmt: skip
    body = []
    for row in rows:
        s = row["summary"]
        body.append([
            row["label"], _num(_median(s, "latency_p50_us"), 0),
            _num(_median(s, "latency_p99_us"), 0), _range(s, "latency_p99_us", 0),
            _num(_median(s, "latency_p99.9_us"), 0), _ratio(row),
            _num(_median(s, "server_cpu_s_per_1000")), _check(s),
        ])  # fmt: skip
    return header, body


def _throughput_rows(
    rows: list[dict[str, Any]], baseline: str
) -> tuple[list[str], list[list[str]]]:
    header = ["system", "changes/s", "min-max", f"vs {baseline}", "wall s", "srv CPU s/1k",
              "check"]  # fmt: skip
    body = []
    for row in rows:
        s = row["summary"]
        body.append([
            row["label"], _num(_median(s, "changes_per_s"), 0), _range(s, "changes_per_s", 0),
            _ratio(row), _num(_median(s, "wall_s")), _num(_median(s, "server_cpu_s_per_1000")),
            _check(s),
        ])  # fmt: skip
    return header, body


def _fanout_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Return a grid: one line per worker count, one column per client count."""
    clients = sorted({r["variant"]["clients"] for r in rows})
    workers = sorted({r["variant"]["workers"] for r in rows})
    cell = {(r["variant"]["workers"], r["variant"]["clients"]): r for r in rows}
    header = ["workers"] + [f"{c} clients" for c in clients]
    body = []
    for w in workers:
        line = [str(w)]
        for c in clients:
            row = cell.get((w, c))
            s = row and row["summary"]
            if not s:
                line.append("-")
                continue
            rate = _num(_median(s, "changes_per_s"), 0)
            line.append(f"{rate}/s p99 {_num(_median(s, 'latency_p99_us'), 0)} us")
        body.append(line)
    return header, body


def _format(header: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def render_workload(name: str, rows: list[dict[str, Any]], markdown: bool) -> str:
    """Render one workload's table, followed by its skipped and failed rows."""
    workload = WORKLOADS[name]
    ran = [r for r in rows if r["summary"] is not None and r["status"] != "skipped"]
    title = f"### {name}" if markdown else f"== {name}"
    parts = [f"{title}: {workload.description}"]
    sizes = {(r["runs"][0]["clients"], r["runs"][0]["planned_changes"]) for r in ran if r["runs"]}
    if len(sizes) == 1 and workload.measure != "fanout":
        clients, changes = sizes.pop()
        parts[0] += f" ({clients} client processes, {changes:,} changes per run)"
    if ran:
        if workload.measure == "fanout":
            header, body = _fanout_rows(ran)
        elif workload.measure == "latency":
            header, body = _latency_rows(ran)
        elif workload.measure == "throughput":
            header, body = _throughput_rows(ran, workload.baseline or "zmq-mem")
        else:
            header, body = _wall_rows(ran)
        parts.append(_format(header, body, markdown))
    seen_reasons = set()
    for row in rows:
        if row["status"] == "ok" or (row["system"], row["reason"]) in seen_reasons:
            continue
        seen_reasons.add((row["system"], row["reason"]))
        parts.append(f"{'- ' if markdown else ''}{row['status']}: {row['label']}: {row['reason']}")
    return "\n\n".join(parts) if markdown else "\n".join(parts)


def render_tables(result: dict[str, Any], markdown: bool) -> str:
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for row in result["rows"]:
        by_workload.setdefault(row["workload"], []).append(row)
    sections = [render_workload(name, rows, markdown) for name, rows in by_workload.items()]
    return "\n\n".join(sections) + "\n"
