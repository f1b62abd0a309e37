"""Render a result document into docs/benchmarks.md.

python3 -m bench --workloads seed --repeat 2 --write-docs    run, then write the page
python3 -m bench.docs [bench/results/latest.json]            write the page from a saved run
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 bench/docs.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tables import render_tables

ROOT = Path(__file__).resolve().parent.parent
DOCS_PATH = ROOT / "docs" / "benchmarks.md"
# Hand-written findings (targets, profiles, what was tried), appended to the generated page.
ANALYSIS_PATH = ROOT / "bench" / "analysis.md"

INTRO = """\
# Benchmarks

Every number on this page was measured by the bench in `bench/` in one run on the machine
below; rerun it with the command shown. The bench starts each server itself on a free
127.0.0.1 port:

- zmqbalance (`python3 -m zmqbalance serve`), in memory and with `--fsync always`;
- Debian's `redis-server`, with no persistence or with `appendonly yes` and
  `appendfsync always`;
- `bench/echo_server.py`, a bare pyzmq ROUTER loop that replies to every request with one
  fixed msgpack reply. It is the floor for any Python ZeroMQ service.

Clients are separate processes with one request in flight each, timed from a barrier that
they all pass together. Each sends one warm-up request before the barrier, so connection
set-up is not timed. zmqbalance and echo clients speak the wire contract on raw pyzmq REQ
sockets.

How to read the tables:

- wall s: median over the repetitions of the time from the barrier to the last reply;
  min-max is the spread over the repetitions.
- vs zmq-mem: the row's median divided by zmqbalance in memory's on the same workload;
  above 1 is slower than zmqbalance.
- on the latency workload the ratio divides p99 latencies instead of wall times.
- srv CPU s/1k: CPU seconds (user + system, all threads) the server process spent per
  1,000 changes, read from its CPU-time clock (`clock_gettime`, nanoseconds) before and
  after the timed window. It varies less than wall time on a busy machine.
- p50, p99, p99.9 us: percentiles of single-change latency in microseconds, measured in
  the clients, all clients of a run pooled, median over the repetitions.
- check: after each run the bench reads every touched account back (zmqbalance `balance`,
  Redis `GET`) and compares with what the clients sent: every balance must be 0, and for
  zmqbalance every change count must match. `lost` and `doubled` count changes missing
  from or applied twice to the counts.
- Redis lock rows: redis-py's `Lock` on `cb_<account>` polls every 1 ms while it waits
  (the library default is 100 ms); pottery's `Redlock` keeps its own random 0-200 ms
  back-off. Both hold the lock for GET and SET of `cb:balance:<account>`.
"""


def engine_workers(result: dict[str, Any]) -> str:
    """Return the worker counts zmqbalance reported on ping in the non-fanout rows."""
    counts = {
        run["server_info"].get("workers")
        for row in result["rows"]
        if row["system"].startswith("zmq") and not row["variant"]
        for run in row["runs"]
    }
    counts.discard(None)
    return ", ".join(str(c) for c in sorted(counts)) or "-"


def machine_section(result: dict[str, Any]) -> str:
    m = result["machine"]
    options = result["options"]
    load = result.get("load_average")
    versions = ", ".join(f"{k} {v}" for k, v in m.get("software", {}).items()) or "-"
    load_lines = []
    if load:
        load_lines.append(
            f"- load average (1, 5, 15 min) at start: {load['start']}, at end: {load['end']}"
        )
    return "\n".join([
        "## Machine and command",
        "",
        f"- date: {result['started']} (took {result['duration_s']:.0f} s)",
        f"- command: `{result['command']}`",
        f"- CPU: {m['cpu_model']}, nproc {m['nproc']}",
        f"- Python {m['python']}, {m['platform']}",
        f"- software: {versions}",
        f"- temporary directory (Redis AOF, zmqbalance journal): {m.get('tmp_fs', '-')}",
        f"- repetitions per row: {options['repeat']}{' (quick mode)' if options['quick'] else ''}",
        f"- zmqbalance worker threads outside the fanout table: {engine_workers(result)}",
    ] + load_lines + [f"- note: {note}" for note in result.get("notes", [])])  # fmt: skip


def render_docs(result: dict[str, Any], analysis_path: Path = ANALYSIS_PATH) -> str:
    analysis = [analysis_path.read_text()] if analysis_path.exists() else []
    return "\n".join([
        INTRO,
        machine_section(result),
        "",
        "## Results",
        "",
        render_tables(result, markdown=True),
        *analysis,
    ])  # fmt: skip


def write_docs(result: dict[str, Any], path: Path = DOCS_PATH) -> None:
    """Write the page to `path` and the result document beside it as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_docs(result))
    path.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    source = Path(args[0]) if args else ROOT / "bench" / "results" / "latest.json"
    write_docs(json.loads(source.read_text()))
    print(f"wrote {DOCS_PATH} from {source}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
