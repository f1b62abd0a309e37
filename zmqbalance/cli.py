"""The ``zmqbalance`` command line: ``serve`` and one subcommand per client op."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import zmq

from zmqbalance.check import check_data_directory
from zmqbalance.client import DEFAULT_ENDPOINT, DEFAULT_RETRIES, DEFAULT_TIMEOUT, Client
from zmqbalance.datadir import DEFAULT_SNAPSHOT_BYTES
from zmqbalance.errors import ZmqBalanceError
from zmqbalance.journal import DEFAULT_SEGMENT_BYTES, FSYNC_MODES
from zmqbalance.protocol import MAX_FRAME_BYTES
from zmqbalance.repartition import repartition
from zmqbalance.server import (
    DEFAULT_BIND,
    DEFAULT_DATA_DIR,
    DEFAULT_QUEUE_MAX,
    DEFAULT_SCALE,
    DEFAULT_WORKERS,
    TEST_HOOKS_VARIABLE,
    Config,
    Server,
)

log = logging.getLogger("zmqbalance")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zmqbalance", description="A balance engine over ZeroMQ and msgpack."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the engine")
    serve.add_argument(
        "--bind", default=DEFAULT_BIND, help="front-end address (default: %(default)s)"
    )
    serve.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="worker threads (default: %(default)s)"
    )
    serve.add_argument(
        "--scale",
        type=int,
        default=DEFAULT_SCALE,
        help="digits after the point in amounts and balances (default: %(default)s)",
    )
    serve.add_argument(
        "--allow-negative", action="store_true", help="let debits take a balance below zero"
    )
    serve.add_argument(
        "--data-dir",
        default=None,
        help=f"directory of the journal and snapshots (default: {DEFAULT_DATA_DIR})",
    )
    serve.add_argument(
        "--in-memory",
        action="store_true",
        help="keep balances in memory only; a restart starts from zero",
    )
    serve.add_argument(
        "--fsync",
        choices=FSYNC_MODES,
        default="always",
        help="always: fsync the journal before replying; off: write it to the operating "
        "system only, which survives a killed process but not a power cut (default: %(default)s)",
    )
    serve.add_argument(
        "--snapshot-bytes",
        type=int,
        default=DEFAULT_SNAPSHOT_BYTES,
        help="journal bytes a worker writes before it takes a snapshot (default: %(default)s)",
    )
    serve.add_argument(
        "--segment-bytes",
        type=int,
        default=DEFAULT_SEGMENT_BYTES,
        help="size at which a journal segment is closed and a new one begun (default: %(default)s)",
    )
    serve.add_argument(
        "--queue-max",
        type=int,
        default=DEFAULT_QUEUE_MAX,
        help="commands queued per worker before new ones get 'busy' (default: %(default)s)",
    )
    serve.add_argument(
        "--line-bind",
        metavar="HOST:PORT",
        help="serve the old TCP line protocol here, e.g. 127.0.0.1:7071 (default: off)",
    )
    serve.add_argument(
        "--http-bind",
        metavar="HOST:PORT",
        help="serve the old HTTP API here, e.g. 127.0.0.1:7080 (default: off)",
    )
    serve.add_argument(
        "--max-frame-bytes",
        type=int,
        default=MAX_FRAME_BYTES,
        help="largest request frame in bytes; ZeroMQ disconnects a client that sends a larger "
        "one (default: %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default: %(default)s)",
    )

    check = commands.add_parser("check", help="verify a data directory offline and summarize it")
    check.add_argument("directory", help="the data directory to check")
    moving = commands.add_parser(
        "repartition", help="rewrite a stopped server's data directory for another worker count"
    )
    moving.add_argument("directory", help="the data directory to rewrite")
    moving.add_argument("--workers", type=int, required=True, help="the new number of workers")

    for name, help_text in (("plus-funds", "credit an account"), ("sub-funds", "debit an account")):
        change = commands.add_parser(name, help=help_text)
        change.add_argument("account")
        change.add_argument("amount", help="decimal amount, e.g. 12.50")
        change.add_argument("--rid", help="request id, so a repeated command applies once")
        _add_client_options(change)
    balance = commands.add_parser("balance", help="print an account's balance and change count")
    balance.add_argument("account")
    _add_client_options(balance)
    _add_client_options(commands.add_parser("ping", help="check that the server answers"))
    return parser


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect", default=DEFAULT_ENDPOINT, help="server address (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds per attempt (default: %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help="attempts after the first (default: %(default)s)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        return check_data_directory(Path(args.directory))
    if args.command == "repartition":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        return repartition(Path(args.directory), args.workers)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return _run_client_command(args)
    except ZmqBalanceError as exc:
        print(f"error: {exc.code}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except zmq.ZMQError as exc:
        print(f"error: cannot connect to {args.connect!r}: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = Config(
            bind=args.bind,
            workers=args.workers,
            scale=args.scale,
            allow_negative=args.allow_negative,
            queue_max=args.queue_max,
            max_frame_bytes=args.max_frame_bytes,
            data_dir=_data_dir(args),
            fsync=args.fsync,
            snapshot_bytes=args.snapshot_bytes,
            segment_bytes=args.segment_bytes,
            test_hooks=os.environ.get(TEST_HOOKS_VARIABLE) == "1",
            line_bind=args.line_bind,
            http_bind=args.http_bind,
        )
        Server(config).serve_forever()
    except (ValueError, OSError, ZmqBalanceError) as exc:
        log.error("cannot serve: %s", exc)
        return 2
    except RuntimeError as exc:
        log.error("stopped after a failure: %s", exc)
        return 1
    return 0


def _data_dir(args: argparse.Namespace) -> str | None:
    if args.in_memory and args.data_dir is not None:
        raise ValueError("--in-memory keeps no data; leave out --data-dir or --in-memory")
    if args.in_memory:
        return None
    return args.data_dir or DEFAULT_DATA_DIR


def _run_client_command(args: argparse.Namespace) -> int:
    with Client(args.connect, timeout=args.timeout, retries=args.retries) as client:
        if args.command == "ping":
            info = client.ping()
            print(f"pong: {info.workers} workers, scale {info.scale}, partition {info.partition}")
        elif args.command == "balance":
            print(client.balance(args.account))
        else:
            change = client.plus_funds if args.command == "plus-funds" else client.sub_funds
            result = change(args.account, args.amount, rid=args.rid)
            print(result)
            if result.replay:
                print(
                    f"note: rid {args.rid} was already applied; nothing changed this time",
                    file=sys.stderr,
                )
    return 0
