"""Command line of the side-by-side bench: select, schedule, run, report.

    python3 -m bench                      every system and workload, 5 repetitions
                                          (13 minutes on a busy 2-core machine)
    python3 -m bench --quick              one small repetition of everything (seconds)
    python3 -m bench --systems zmq-mem,redis --workloads seed --repeat 3
    python3 -m bench --workloads seed --repeat 2 --write-docs

Repetitions are interleaved: repetition 1 of every system, then repetition 2, and so on, with
the system order rotated each time, so slow drift of the machine spreads over all systems.
Progress goes to stderr, the table to stdout, the JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.prereqs import ensure_redis_server, progress
from bench.procs import ServerStartError
from bench.runner import run_plan
from bench.systems import ROOT, SYSTEMS, System, start, unavailable_reason
from bench.workloads import WORKLOADS, Plan, Workload

DEFAULT_REPEAT = 5
RESULTS_DIR = ROOT / "bench" / "results"
DOCS_PATH = ROOT / "docs" / "benchmarks.md"
FORKSERVER_PRELOAD = ["bench.clients", "bench.runner", "zmq", "msgpack", "redis", "pottery"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m bench",
        description="Run zmqbalance side by side with Redis and a bare echo.",
    )
    parser.add_argument(
        "--systems",
        default="all",
        help=f"comma-separated systems, or 'all' (default): {', '.join(SYSTEMS)}",
    )
    parser.add_argument(
        "--workloads",
        default="all",
        help=f"comma-separated workloads, or 'all' (default): {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help=f"repetitions of every row (default {DEFAULT_REPEAT}; 1 with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts and one fanout point; for smoke tests"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON and the chart go"
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="stop a run's clients after this many seconds (default: the workload's, 120 s)",
    )
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        help="a remark about this run for the JSON and the docs page; repeatable",
    )
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    parser.add_argument(
        "--write-docs", action="store_true", help=f"also render the results into {DOCS_PATH}"
    )
    args = parser.parse_args(argv)

    args.system_list = _select(parser, "system", args.systems, SYSTEMS)
    args.workload_list = _select(parser, "workload", args.workloads, WORKLOADS)
    if args.repeat is None:
        args.repeat = 1 if args.quick else DEFAULT_REPEAT
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error("--time-budget must be above 0 seconds")
    args.systems_named = args.systems != "all"
    return args


def _select(
    parser: argparse.ArgumentParser, what: str, value: str, known: dict[str, Any]
) -> list[str]:
    if value == "all":
        return list(known)
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


class Bench:
    """Runs the schedule and collects every run under its row key."""

    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
        self.rows: dict[str, dict[str, Any]] = {}
        self.run_counter = 0

    def row(
        self, workload: Workload, system: System, variant: dict[str, int] | None = None
    ) -> dict[str, Any]:
        key = report.row_key(workload.name, system.name, variant)
        if key not in self.rows:
            self.rows[key] = {
                "key": key,
                "workload": workload.name,
                "measure": workload.measure,
                "system": system.name,
                "label": system.label,
                "variant": variant or {},
                "status": "ok",
                "reason": None,
                "runs": [],
            }
        return self.rows[key]

    def plan_rows(self) -> list[tuple[Workload, System]]:
        """Return the (workload, system) pairs to run, and record the rows that cannot run."""
        pairs = []
        for workload in (WORKLOADS[n] for n in self.args.workload_list):
            for system in (SYSTEMS[n] for n in self.args.system_list):
                if workload.only_systems is not None and system.name not in workload.only_systems:
                    if workload.skip_reason:
                        self._skip(workload, system, workload.skip_reason)
                    continue
                reason = unavailable_reason(system)
                if (
                    reason is None
                    and system.name in workload.opt_in_systems
                    and not self.args.systems_named
                ):
                    reason = "runs only when named in --systems, to keep the default run short"
                if reason is not None:
                    self._skip(workload, system, reason)
                    continue
                pairs.append((workload, system))
        return pairs

    def _skip(self, workload: Workload, system: System, reason: str) -> None:
        variants: list[dict[str, int] | None] = [None]
        if workload.measure == "fanout":
            variants = [
                {"workers": w, "clients": c} for w, c in workload.fanout_points(self.args.quick)
            ]
        for variant in variants:
            row = self.row(workload, system, variant)
            row["status"], row["reason"] = "skipped", reason
        progress(f"skip {workload.name}/{system.name}: {reason}")

    def run_all(self) -> None:
        pairs = self.plan_rows()
        started = time.monotonic()
        for rep in range(self.args.repeat):
            for workload, system in _rotate_systems(pairs, rep):
                label = f"rep {rep + 1}/{self.args.repeat} {workload.name}/{system.name}"
                if workload.measure == "fanout":
                    self._run_fanout(workload, system, label)
                else:
                    self._run_one(workload, system, None, label)
                progress(f"  ... {time.monotonic() - started:.0f} s elapsed")

    def _run_one(self, workload: Workload, system: System, workers: int | None, label: str) -> None:
        plans = [workload.plan(self.args.quick)]
        runs = self._with_server(system, workers, label, plans, self._budget(workload))
        self._record(self.row(workload, system), runs, label)

    def _run_fanout(self, workload: Workload, system: System, label: str) -> None:
        """Start one server per worker count and run every client count against it."""
        points = workload.fanout_points(self.args.quick)
        for workers in sorted({w for w, _ in points}):
            clients = [c for w, c in points if w == workers]
            plans = [workload.plan(self.args.quick, c) for c in clients]
            server_label = f"{label} workers={workers}"
            runs = self._with_server(system, workers, server_label, plans, self._budget(workload))
            for index, count in enumerate(clients):
                row = self.row(workload, system, {"workers": workers, "clients": count})
                run = None if runs is None else [runs[index]]
                self._record(row, run, f"{server_label} clients={count}")

    def _budget(self, workload: Workload) -> float:
        budget: float = self.args.time_budget or workload.time_budget_s
        return budget

    def _with_server(
        self, system: System, workers: int | None, label: str, plans: list[Plan], budget_s: float
    ) -> list[dict[str, Any]] | None:
        """Run `plans` in order against one fresh server; return None if it did not start."""
        self.run_counter += 1
        rundir = self.workdir / f"run{self.run_counter:04d}"
        rundir.mkdir()
        try:
            running = start(system, rundir, workers)
        except ServerStartError as exc:
            progress(f"{label}: server did not start: {exc}")
            return None
        try:
            runs = [run_plan(self.ctx, running, plan, budget_s) for plan in plans]
        finally:
            code = running.stop()
            shutil.rmtree(rundir, ignore_errors=True)
        if code not in (0, -signal.SIGTERM):
            progress(f"{label}: warning: server exited with code {code} after SIGTERM")
        for run in runs:
            run["server_exit_code"] = code
        return runs

    def _record(self, row: dict[str, Any], runs: list[dict[str, Any]] | None, label: str) -> None:
        if runs is None:
            row["status"], row["reason"] = "failed", "server did not start"
            return
        for run in runs:
            row["runs"].append(run)
            if run["errors"]:
                row["status"], row["reason"] = "failed", run["errors"][0]
            progress(f"{label}: {report.describe_run(run)}")


def _rotate_systems(
    pairs: list[tuple[Workload, System]], shift: int
) -> list[tuple[Workload, System]]:
    """Return `pairs` with each workload's systems rotated left by `shift` places."""
    rotated: list[tuple[Workload, System]] = []
    for workload in dict.fromkeys(w for w, _ in pairs):
        group = [pair for pair in pairs if pair[0] is workload]
        offset = shift % len(group)
        rotated += group[offset:] + group[:offset]
    return rotated


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    load_at_start = report.load_average()
    ensure_redis_server(any(SYSTEMS[n].kind == "redis" for n in args.system_list))
    with tempfile.TemporaryDirectory(prefix="zmqbalance-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        bench.run_all()
    command_args = argv if argv is not None else sys.argv[1:]
    result = report.build(bench.rows, args, command_args, started, load_at_start)
    result["notes"] = args.note
    print(report.render_text(result))
    paths = report.write_json(result, args.results_dir)
    progress(f"results: {', '.join(str(p) for p in paths)}")
    if not args.no_chart:
        from bench.chart import draw

        progress(draw(result, args.results_dir))
    if args.write_docs:
        from bench.docs import write_docs

        write_docs(result, DOCS_PATH)
        progress(f"wrote {DOCS_PATH}")
    failed = [r["key"] for r in result["rows"] if r["status"] == "failed"]
    if failed:
        progress(f"failed rows: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
