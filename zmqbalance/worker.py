"""The worker thread: the only writer of the accounts it owns.

A worker loops over four steps: drain what is queued on its inproc socket (up to
:data:`MAX_GROUP` commands), apply each command to its ledger, commit the group's records to its
journal with one sync, then send the group's replies. No reply, including a balance read, leaves
before the changes it could reveal are committed.

Commands arrive from the broker already validated, many in one message (see :data:`Command`),
and the replies of a group go back in one message, so that crossing between threads costs one
socket call per batch rather than per command. A :data:`STOP` message makes the worker finish
what is queued before it, then exit.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol, cast

import msgpack
import zmq

from zmqbalance.batch import Part, PartResult, parse_change
from zmqbalance.errors import RequestError, WrongPartition, format_rid
from zmqbalance.journal import Record
from zmqbalance.ledger import BALANCE, CHANGE_OPS, Ledger, Outcome, Rid, needs_record
from zmqbalance.money import format_units
from zmqbalance.partition import owner_of
from zmqbalance.protocol import DEBUG_SLEEP, encode_error, encode_outcome, pack
from zmqbalance.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

MAX_GROUP = 1024  # commands committed together; bounds the latency one group adds
STOP = b"\x00stop"
STOPPED = b"\x00stopped"


def has_message(socket: zmq.Socket[bytes]) -> bool:
    """Tell whether a message can be received now, without raising zmq.Again when not."""
    events = cast(int, socket.getsockopt(zmq.EVENTS))
    return bool(events & zmq.POLLIN)


class Store(Protocol):
    """The storage a worker commits its groups to: a data directory, or nothing in memory."""

    durable: bool

    @property
    def syncs(self) -> int:
        """Journal fsyncs so far."""
        ...

    def append(self, records: list[Record]) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...

    def snapshot_due(self) -> bool: ...

    def take_snapshot(self, ledger: Ledger) -> Path: ...


# A validated command on its way to a worker: the client's routing envelope, op, account,
# amount in minor units, rid, debug_sleep seconds, and for a batch the worker's part of it.
# The broker sends a worker a msgpack array of these in one message; the worker answers with
# one array of (envelope, reply body) pairs, or (gather id, part results) for a batch part.
Command = tuple[list[bytes], str, str, int, "Rid | None", float, "Part | None"]


class Worker(threading.Thread):
    """A thread that owns one ledger and one journal, and serves one inproc socket."""

    def __init__(
        self,
        index: int,
        workers: int,
        context: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        ledger: Ledger,
        store: Store,
        *,
        queue_max: int,
    ) -> None:
        super().__init__(name=f"zmqbalance-worker-{index}", daemon=True)
        self.index = index
        self.workers = workers
        self.context = context
        self.endpoint = endpoint
        self.ledger = ledger
        self.store = store
        self.durable = store.durable
        self.queue_max = queue_max
        self.started = threading.Event()
        self._refusals = RateLimitedLog(log)  # refused changes, at most one line per code a while
        self.groups = 0
        self.commands = 0

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else "stopped"
        return f"<Worker {self.index} {state} {self.ledger!r} groups={self.groups}>"

    def run(self) -> None:
        socket = self.context.socket(zmq.DEALER)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.RCVHWM, self.queue_max)
            socket.setsockopt(zmq.SNDHWM, 0)  # no high-water mark: a reply send never blocks
            socket.bind(self.endpoint)
            self.started.set()
            self._serve(socket)
        except zmq.ContextTerminated:
            log.info("worker %d stopped by context termination", self.index)
        except Exception:
            log.exception("worker %d crashed", self.index)
            raise
        finally:
            socket.close(linger=0)
            self.store.close()

    def _serve(self, socket: zmq.Socket[bytes]) -> None:
        while True:
            commands, stopping = self._drain(socket)
            if commands:
                socket.send(pack(self.process(commands)))
            if self.store.snapshot_due():
                self._snapshot()
            if stopping:
                socket.send(STOPPED)
                log.info(
                    "worker %d stopped after %d commands in %d groups, %d journal syncs",
                    self.index,
                    self.commands,
                    self.groups,
                    self.store.syncs,
                )
                return

    def _drain(self, socket: zmq.Socket[bytes]) -> tuple[list[Command], bool]:
        """Wait for a batch, then take what else is queued, up to MAX_GROUP commands.

        Returns the commands and whether a STOP message came after them.
        """
        commands: list[Command] = []
        frame = socket.recv()
        while True:
            if frame == STOP:
                return commands, True
            commands.extend(msgpack.unpackb(frame, raw=False))
            if len(commands) >= MAX_GROUP or not has_message(socket):
                return commands, False
            frame = socket.recv()

    def process(self, commands: list[Command]) -> list[tuple[Any, Any]]:
        """Apply a group of commands, commit their records with one sync, return the replies.

        Each reply is the command's envelope and its encoded reply body, or for a batch part
        its gather id and the part's results.
        """
        records: list[Record] = []
        replies: list[tuple[Any, Any]] = []
        for envelope, op, account, units, rid, seconds, part in commands:
            if part is not None:
                replies.append((part[0], self._apply_part(part, records)))
            else:
                replies.append((envelope, self._apply(op, account, units, rid, seconds, records)))

        if records:
            # A failure here propagates and stops the worker before any reply of the group
            # is sent: the ledger is ahead of the disk, and only a restart can reconcile them.
            self.store.append(records)
            self.store.sync()
        self.groups += 1
        self.commands += len(commands)
        return replies

    def _snapshot(self) -> None:
        try:
            self.store.take_snapshot(self.ledger)
        except OSError:
            # The journal still contains every change, so the engine is safe without this
            # snapshot; recovery only takes longer. The next group tries again.
            log.exception("worker %d could not take a snapshot", self.index)

    def _apply(
        self,
        op: str,
        account: str,
        units: int,
        rid: Rid | None,
        seconds: float,
        records: list[Record],
    ) -> bytes:
        try:
            outcome = self._outcome(op, account, units, rid, seconds)
        except Exception:
            log.exception(
                "worker %d failed on %s for account %r rid %r", self.index, op, account, rid
            )
            return encode_error("internal_error", f"the server failed on {op}; see its log", rid)

        if op in CHANGE_OPS and needs_record(outcome, rid):
            records.append((op, account, units, rid, outcome.error, outcome.message))
        if not outcome.ok:
            self._refusals.log(
                logging.INFO,
                outcome.error or "",
                "worker %d answered %s to %s on account %r rid %s: %s",
                self.index,
                outcome.error,
                op,
                account,
                format_rid(rid),
                outcome.message,
            )
        return encode_outcome(outcome, self.ledger.scale, rid)

    def _apply_part(self, part: Part, records: list[Record]) -> list[Any]:
        """Apply each change of a batch part on its own; return the part's results."""
        _, _, pairs, detail, frame = part
        client_partitioned = frame is not None
        items = enumerate(msgpack.unpackb(frame, raw=False)["changes"]) if frame else pairs or []
        result = PartResult()
        scale = self.ledger.scale
        for index, change in items:
            try:
                op, account, units, rid = parse_change(change, scale)
                if client_partitioned and owner_of(account, self.workers) != self.index:
                    raise WrongPartition(
                        f"account {account!r} belongs to worker "
                        f"{owner_of(account, self.workers)}, not {self.index}"
                    )
            except RequestError as exc:
                result.failed.append((index, exc.code, exc.message))
                if detail:
                    result.results.append((index, [False, exc.code, exc.message]))
                continue

            if rid is None and not detail:
                refusal = self.ledger.change(op, account, units)
                if refusal is None:
                    result.applied += 1
                    if self.durable:
                        records.append((op, account, units, None, None, None))
                else:
                    result.failed.append((index, refusal.error or "", refusal.message or ""))
                continue

            outcome = self.ledger.apply(op, account, units, rid)
            if needs_record(outcome, rid):
                records.append((op, account, units, rid, outcome.error, outcome.message))
            if outcome.replay:
                result.replayed.append(index)
            if not outcome.ok:
                result.failed.append((index, outcome.error or "", outcome.message or ""))
            elif not outcome.replay:
                result.applied += 1
            if detail:
                result.results.append((index, _detail(outcome, scale)))
        return result.to_wire()

    def _outcome(
        self, op: str, account: str, units: int, rid: Rid | None, seconds: float
    ) -> Outcome:
        if op == BALANCE:
            return self.ledger.read(account)
        if op == DEBUG_SLEEP:
            time.sleep(seconds)
            return self.ledger.read(account)
        return self.ledger.apply(op, account, units, rid)


def _detail(outcome: Outcome, scale: int) -> list[Any]:
    if outcome.ok:
        return [True, format_units(outcome.balance, scale), outcome.count]
    return [False, outcome.error, outcome.message]
