"""The batch op against real servers: each change on its own, in order, deduplicated by rid."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import msgpack
import zmq

from tests.crashkit import DurableServer, kill_started
from tests.serverproc import ServerProcess
from tests.wire import request
from zmqbalance import Client
from zmqbalance.protocol import MAX_BATCH_CHANGES

TIMEOUT_MS = 10_000


def call(endpoint: str, message: dict[str, Any]) -> dict[str, Any]:
    return request(zmq.Context.instance(), endpoint, message)


def balance(endpoint: str, account: str) -> tuple[str, int]:
    with Client(endpoint) as client:
        reply = client.balance(account)
        return reply.balance_text, reply.count


def test_batch_mixed_outcomes_each_in_place(server: ServerProcess) -> None:
    changes = [
        ["plus_funds", "m-a", 100],
        ["plus_funds", "m-b", "0.1"],
        ["sub_funds", "m-a", 60],
        ["plus_funds", "m-b", "0.0000001"],
        ["sub_funds", "m-a", 60],
        ["plus_funds", "m-b", "0.2"],
        ["plus_funds", "", 1],
        "not a change",
        ["transfer", "m-a", 1],
        ["sub_funds", "m-b", "0.3"],
    ]
    reply = call(server.endpoint, {"op": "batch", "changes": changes, "detail": True})

    assert reply["ok"] is True
    assert reply["applied"] == 5
    assert [entry[0] for entry in reply["failed"]] == [3, 4, 6, 7, 8]
    assert [entry[1] for entry in reply["failed"]] == [
        "invalid_amount",
        "insufficient_funds",
        "invalid_account",
        "bad_request",
        "unknown_op",
    ]
    assert reply["results"][2] == [True, "40.000000", 2]
    assert reply["results"][4][1] == "insufficient_funds"
    assert reply["results"][9] == [True, "0.000000", 3]
    assert balance(server.endpoint, "m-a") == ("40.000000", 2)
    assert balance(server.endpoint, "m-b") == ("0.000000", 3)


def test_batch_keeps_order_within_account(server: ServerProcess) -> None:
    # Each debit succeeds only if the credit just before it was applied first.
    changes = []
    for _ in range(500):
        changes.append(["plus_funds", "ordered", 2])
        changes.append(["sub_funds", "ordered", 2])
    reply = call(server.endpoint, {"op": "batch", "changes": changes})

    assert reply["failed"] == []
    assert reply["applied"] == 1000
    assert balance(server.endpoint, "ordered") == ("0.000000", 1000)


def test_batch_order_across_pipelined_requests(server: ServerProcess, zmq_context: Any) -> None:
    dealer = zmq_context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    dealer.connect(server.endpoint)
    for _ in range(200):
        credit = [["plus_funds", "piped", 1]]
        debit = [["sub_funds", "piped", 1]]
        dealer.send_multipart([b"", msgpack.packb({"op": "batch", "changes": credit})])
        dealer.send_multipart([b"", msgpack.packb({"op": "batch", "changes": debit})])
    replies = [msgpack.unpackb(dealer.recv_multipart()[-1]) for _ in range(400)]
    dealer.close(linger=0)

    assert all(reply["failed"] == [] for reply in replies)
    assert balance(server.endpoint, "piped") == ("0.000000", 400)


def test_batch_over_limit_rejected_whole(server: ServerProcess) -> None:
    changes = [["plus_funds", "big", 1]] * (MAX_BATCH_CHANGES + 1)
    reply = call(server.endpoint, {"op": "batch", "changes": changes})

    assert reply["ok"] is False
    assert reply["error"] == "too_large"
    assert str(MAX_BATCH_CHANGES + 1) in reply["message"]
    assert balance(server.endpoint, "big") == ("0.000000", 0)


def test_batch_at_limit_applied(server: ServerProcess) -> None:
    changes = [["plus_funds", f"limit-{i % 100}", 1] for i in range(MAX_BATCH_CHANGES)]
    reply = call(server.endpoint, {"op": "batch", "changes": changes})

    assert reply["applied"] == MAX_BATCH_CHANGES
    assert balance(server.endpoint, "limit-7") == ("100.000000", 100)


def test_batch_bad_fields_rejected(server: ServerProcess) -> None:
    for message, code in [
        ({"op": "batch"}, "bad_request"),
        ({"op": "batch", "changes": {"a": 1}}, "bad_request"),
        ({"op": "batch", "changes": [], "detail": "yes"}, "bad_request"),
        ({"op": "batch", "changes": [], "partition": 99}, "bad_request"),
        ({"op": "batch", "changes": [], "partition": True}, "bad_request"),
    ]:
        reply = call(server.endpoint, message)
        assert reply["ok"] is False, message
        assert reply["error"] == code, message


def test_batch_empty_answers_zero(server: ServerProcess) -> None:
    reply = call(server.endpoint, {"op": "batch", "changes": [], "rid": "empty"})

    assert reply == {"ok": True, "applied": 0, "failed": [], "replayed": [], "rid": "empty"}


def test_partitioned_batch_checks_owner(server: ServerProcess) -> None:
    accounts = [f"p-{i}" for i in range(40)]
    owned = [account for account in accounts if zlib.crc32(account.encode()) % 4 == 2]
    changes = [["plus_funds", account, 1] for account in accounts]
    reply = call(server.endpoint, {"op": "batch", "changes": changes, "partition": 2})

    assert reply["applied"] == len(owned)
    assert {entry[1] for entry in reply["failed"]} == {"wrong_partition"}
    assert len(reply["failed"]) == len(accounts) - len(owned)
    assert balance(server.endpoint, owned[0]) == ("1.000000", 1)


def test_batch_rids_deduplicated(server: ServerProcess) -> None:
    changes = [
        ["plus_funds", "dedup", 5, "d-1"],
        ["plus_funds", "dedup", 5, "d-1"],
        ["sub_funds", "dedup", 50, "d-2"],
    ]
    first = call(server.endpoint, {"op": "batch", "changes": changes})
    second = call(server.endpoint, {"op": "batch", "changes": changes})
    conflict = call(
        server.endpoint, {"op": "batch", "changes": [["plus_funds", "dedup", 6, "d-1"]]}
    )

    assert first["applied"] == 1
    assert first["replayed"] == [1]
    assert [entry[1] for entry in first["failed"]] == ["insufficient_funds"]
    assert second["applied"] == 0
    assert second["replayed"] == [0, 1, 2]
    assert [entry[1] for entry in second["failed"]] == ["insufficient_funds"]
    assert conflict["failed"][0][1] == "rid_conflict"
    assert balance(server.endpoint, "dedup") == ("5.000000", 1)


def test_batch_rids_deduplicated_after_restart(tmp_path: Path) -> None:
    server = DurableServer(tmp_path / "data", ("--workers", "2"))
    try:
        server.start()
        changes = [["plus_funds", f"r-{i % 10}", 1, f"rid-{i}"] for i in range(200)]
        first = call(server.endpoint, {"op": "batch", "changes": changes})
        server.kill()
        server.start()
        again = call(server.endpoint, {"op": "batch", "changes": changes})
        found = balance(server.endpoint, "r-3")
    finally:
        kill_started()

    assert first["applied"] == 200
    assert again["applied"] == 0
    assert len(again["replayed"]) == 200
    assert found == ("20.000000", 20)


def test_batch_rids_deduplicated_after_snapshot(tmp_path: Path) -> None:
    server = DurableServer(tmp_path / "data", ("--workers", "1", "--snapshot-bytes", "2000"))
    try:
        server.start()
        changes = [["plus_funds", "snap", 1, f"s-{i}"] for i in range(300)]
        for start in range(0, 300, 30):
            call(server.endpoint, {"op": "batch", "changes": changes[start : start + 30]})
        server.kill()
        server.start()
        again = call(server.endpoint, {"op": "batch", "changes": changes})
        found = balance(server.endpoint, "snap")
        snapshots = list((tmp_path / "data" / "worker-0").glob("snapshot-*.snap"))
    finally:
        kill_started()

    assert snapshots
    assert again["applied"] == 0
    assert found == ("300.000000", 300)
