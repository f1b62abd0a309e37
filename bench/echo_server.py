"""A bare pyzmq ROUTER server that replies to every request with one fixed msgpack reply.

It does not decode requests, keep balances or use threads: one recv_multipart and one
send_multipart per request. That is the floor for any Python ZeroMQ service, so the bench
runs it as its own process and compares the engine's wall time with it.

    python3 bench/echo_server.py --bind tcp://127.0.0.1:7071
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

import msgpack
import zmq

# Same keys and value types as a successful zmqbalance change reply.
REPLY = msgpack.packb({"ok": True, "account": "0", "balance": "0.000000", "count": 0})


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(bind: str) -> None:
    """Reply to requests on `bind` until SIGTERM or SIGINT."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    try:
        router.bind(bind)
        while True:
            # A REQ peer sends [identity, b"", request]; everything before the request is
            # the envelope, and the reply goes back with the same envelope.
            frames = router.recv_multipart(copy=False)
            router.send_multipart([*frames[:-1], REPLY], copy=False)
    finally:
        router.close(linger=0)
        context.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True, help="ZeroMQ endpoint, e.g. tcp://127.0.0.1:7071")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        serve(args.bind)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
