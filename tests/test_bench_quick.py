"""The bench's quick mode runs end to end and writes a result document of the expected shape.

The bench is started as a user would start it, as `python3 -m bench --quick` in a
subprocess. Rows whose server is not installed are skipped by the bench, not failed.
Timings are only checked to be present, never compared with a limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUICK_TIMEOUT_S = 110  # below the 120 s per-test limit; a quick run takes well under a minute

ROW_KEYS = {"key", "workload", "measure", "system", "label", "variant", "status", "reason", "runs"}
WORKLOAD_NAMES = (
    "seed",
    "seed1000",
    "hot",
    "random",
    "latency",
    "fanout",
    "batch",
    "batch-partitioned",
    "batch-pipelined",
    "pipeline",
)
RUN_KEYS = {"wall_s", "changes", "planned_changes", "server_cpu_s", "errors", "check"}


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Any]:
    results = tmp_path_factory.mktemp("bench-results")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-chart", "--results-dir", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT_S,
    )
    latest = results / "latest.json"
    document = json.loads(latest.read_text()) if latest.exists() else {}
    return done, document


def test_quick_exits_zero(quick_run):
    done, _ = quick_run
    assert done.returncode == 0, done.stderr[-3000:]


def test_quick_prints_table(quick_run):
    done, _ = quick_run
    assert "== seed" in done.stdout
    assert "rep 1/1 seed/" in done.stderr


def test_quick_document_header(quick_run):
    _, document = quick_run
    assert document["schema"] == 1
    assert document["options"]["quick"] is True
    assert document["options"]["repeat"] == 1
    assert document["machine"]["nproc"] >= 1
    assert document["command"].startswith("python3 -m bench")


def test_quick_rows_shape(quick_run):
    _, document = quick_run
    rows = document["rows"]
    assert {r["workload"] for r in rows} == set(WORKLOAD_NAMES)
    for row in rows:
        assert ROW_KEYS <= row.keys(), row["key"]
        assert row["status"] in ("ok", "skipped"), (row["key"], row["reason"])
        if row["status"] == "skipped":
            assert row["reason"], row["key"]


def test_quick_runs_measured_and_checked(quick_run):
    _, document = quick_run
    ran = [r for r in document["rows"] if r["status"] == "ok"]
    assert any(r["system"] == "echo" for r in ran)
    for row in ran:
        assert len(row["runs"]) == 1, row["key"]
        run = row["runs"][0]
        assert RUN_KEYS <= run.keys(), row["key"]
        assert run["errors"] == [], row["key"]
        assert run["changes"] == run["planned_changes"], row["key"]
        assert run["wall_s"] > 0, row["key"]
        assert row["summary"]["wall_s"]["median"] > 0, row["key"]


def test_quick_balances_all_correct(quick_run):
    _, document = quick_run
    for row in document["rows"]:
        if row["status"] != "ok" or row["system"] == "echo":
            continue
        check = row["runs"][0]["check"]
        assert check is not None, row["key"]
        assert check["wrong_balances"] == 0, row["key"]
        assert check["ok"] is True, (row["key"], check)


def test_quick_fanout_single_point(quick_run):
    _, document = quick_run
    fanout = [r for r in document["rows"] if r["workload"] == "fanout"]
    assert len(fanout) == 1
    assert fanout[0]["variant"] == {"workers": 2, "clients": 2}
