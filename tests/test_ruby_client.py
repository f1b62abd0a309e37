"""Tests of the Ruby client in clients/ruby, run as `ruby` subprocesses.

Most tests talk to a real server (the `server` fixture in conftest.py). The
retry tests point the client at a scripted ROUTER socket in this process, which
records every request and decides per request whether and what to reply.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

REPO_ROOT = Path(__file__).resolve().parent.parent
RUBY_CLIENT = REPO_ROOT / "clients" / "ruby"
RUBY = shutil.which("ruby")

RUBY_TIMEOUT = 120.0  # seconds for one ruby subprocess, the workload included
ROUTER_POLL_MS = 50  # how often the scripted ROUTER checks for its stop flag

pytestmark = pytest.mark.skipif(
    RUBY is None, reason="ruby is not installed; the Ruby client tests need it on PATH"
)


def run_ruby(script: str, *args: str, expect_rc: int = 0) -> subprocess.CompletedProcess[str]:
    """Run a Ruby script given as text with the client's lib/ on the load path."""
    return run_ruby_argv(["-e", script, "--", *args], expect_rc=expect_rc)


def run_ruby_argv(argv: list[str], expect_rc: int = 0) -> subprocess.CompletedProcess[str]:
    """Run `ruby -I clients/ruby/lib ARGV...` and check its exit status."""
    assert RUBY is not None
    completed = subprocess.run(
        [RUBY, "-I", str(RUBY_CLIENT / "lib"), *argv],
        capture_output=True,
        text=True,
        timeout=RUBY_TIMEOUT,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == expect_rc, (
        f"ruby exited with {completed.returncode}, expected {expect_rc}\n"
        f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    )
    return completed


def run_ruby_json(script: str, *args: str) -> Any:
    """Run a Ruby script that prints one JSON document and return it decoded."""
    prelude = 'require "zmqbalance"\nrequire "json"\nrequire "bigdecimal"\n'
    return json.loads(run_ruby(prelude + script, *args).stdout)


Reply = dict[str, Any] | bytes | None
Responder = Callable[[int, dict[str, Any]], Reply]


class ScriptedRouter:
    """A ROUTER socket on a random 127.0.0.1 port, served by its own thread.

    For the n-th request (0-based) it calls `respond(n, request)` and sends the
    returned map back packed with msgpack, bytes back as they are, or nothing
    when it returns None. Every raw request
    frame is kept in `frames`.
    """

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.frames: list[bytes] = []
        self.endpoint = ""
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="scripted-router", daemon=True)

    @property
    def requests(self) -> list[dict[str, Any]]:
        return [msgpack.unpackb(frame) for frame in self.frames]

    def __enter__(self) -> ScriptedRouter:
        self._thread.start()
        assert self._bound.wait(5.0), "scripted ROUTER did not bind within 5 s"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        assert not self._thread.is_alive(), "scripted ROUTER thread did not stop"

    def _serve(self) -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        try:
            port = router.bind_to_random_port("tcp://127.0.0.1")
            self.endpoint = f"tcp://127.0.0.1:{port}"
            self._bound.set()
            while not self._stop.is_set():
                if router.poll(ROUTER_POLL_MS, zmq.POLLIN):
                    self._handle(router, router.recv_multipart())
        finally:
            router.close(linger=0)
            context.term()

    def _handle(self, router: zmq.Socket[bytes], frames: list[bytes]) -> None:
        # A REQ peer sends [identity, empty delimiter, body].
        identity, delimiter, body = frames
        index = len(self.frames)
        self.frames.append(body)
        reply = self.respond(index, msgpack.unpackb(body))
        if reply is None:
            return
        body = reply if isinstance(reply, bytes) else msgpack.packb(reply)
        router.send_multipart([identity, delimiter, body])


def echo_result(request: dict[str, Any], count: int = 1) -> dict[str, Any]:
    """A success reply for `request`, echoing its account and rid."""
    reply: dict[str, Any] = {"ok": True, "account": str(request["account"])}
    reply.update(balance="1.000000", count=count)
    if "rid" in request:
        reply["rid"] = request["rid"]
    return reply


@pytest.fixture
def swallow_first() -> Iterator[ScriptedRouter]:
    """A ROUTER that drops the first request and replies to every later one."""

    def respond(index: int, request: dict[str, Any]) -> Reply:
        return None if index == 0 else echo_result(request)

    with ScriptedRouter(respond) as router:
        yield router


RESULT_JSON = """
def result_json(result)
  { "class" => result.class.name, "account" => result.account,
    "balance" => result.balance.to_s("F"), "balance_text" => result.balance_text,
    "count" => result.count, "replay" => result.replay?, "rid" => result.rid }
end
"""


# --- the workload, against a real server ---


def test_workload_ends_at_zero(server: Any) -> None:
    workload = str(RUBY_CLIENT / "bench_workload.rb")
    completed = run_ruby_argv([workload, "--endpoint", server.endpoint, "--check"])
    lines = completed.stdout.splitlines()
    for account in (0, 1, 2):
        assert f"account {account}: 0.000000 2000" in lines, completed.stdout
    assert sum(line.startswith("client ") for line in lines) == 10, completed.stdout


def test_workload_check_fails_on_wrong_count() -> None:
    # Every reply contains balance 0 and count 0, so the count never grows.
    def respond(index: int, request: dict[str, Any]) -> Reply:
        return {**echo_result(request, count=0), "balance": "0.000000"}

    workload = str(RUBY_CLIENT / "bench_workload.rb")
    with ScriptedRouter(respond) as router:
        completed = run_ruby_argv(
            [workload, "--endpoint", router.endpoint, "--check", "--clients", "2", "--rounds", "1"],
            expect_rc=1,
        )
    assert "check failed: account 0: expected 0.000000 4, got 0.000000 0" in completed.stderr


# --- amounts, against a real server ---


def test_big_decimal_amounts_exact(server: Any) -> None:
    output = run_ruby_json(
        RESULT_JSON
        + """
        ZmqBalance::Client.open(ARGV[0]) do |client|
          client.plus_funds("exact-bd", BigDecimal("0.1"))
          client.plus_funds("exact-bd", BigDecimal("0.2"))
          puts JSON.generate(result_json(client.sub_funds("exact-bd", BigDecimal("0.3"))))
        end
        """,
        server.endpoint,
    )
    assert output["balance_text"] == "0.000000"
    assert output["balance"] == "0.0"
    assert output["count"] == 3


def test_string_amounts_exact(server: Any) -> None:
    output = run_ruby_json(
        RESULT_JSON
        + """
        ZmqBalance::Client.open(ARGV[0]) do |client|
          client.plus_funds("exact-str", "0.1")
          client.plus_funds("exact-str", "0.2")
          puts JSON.generate(result_json(client.sub_funds("exact-str", "0.3")))
        end
        """,
        server.endpoint,
    )
    assert output["balance_text"] == "0.000000"
    assert output["count"] == 3


def test_float_amount_accepted(server: Any) -> None:
    output = run_ruby_json(
        RESULT_JSON
        + """
        ZmqBalance::Client.open(ARGV[0]) do |client|
          puts JSON.generate(result_json(client.plus_funds("float", 0.1)))
        end
        """,
        server.endpoint,
    )
    assert output["balance_text"] == "0.100000"
    assert output["balance"] == "0.1"
    assert output["class"] == "ZmqBalance::Result"


REJECTIONS_SCRIPT = """
def outcome
  yield
  { "raised" => nil }
rescue ZmqBalance::Error => e
  { "raised" => e.class.name, "code" => e.code, "message" => e.message,
    "request_error" => e.is_a?(ZmqBalance::RequestError),
    "refused_error" => e.is_a?(ZmqBalance::RefusedError) }
rescue ArgumentError => e
  { "raised" => "ArgumentError", "message" => e.message }
end

ZmqBalance::Client.open(ARGV[0]) do |client|
  client.plus_funds("reject", 1)
  puts JSON.generate(
    "too_many_decimals" => outcome { client.plus_funds("reject", "0.0000001", rid: "r-dec") },
    "negative" => outcome { client.plus_funds("reject", BigDecimal("-1")) },
    "zero" => outcome { client.sub_funds("reject", 0) },
    "not_a_number" => outcome { client.plus_funds("reject", "ten") },
    "overdraft" => outcome { client.sub_funds("reject", 2, rid: "r-over") },
    "rational" => outcome { client.plus_funds("reject", 1/3r) },
    "nan" => outcome { client.plus_funds("reject", Float::NAN) },
    "nil_account" => outcome { client.balance(nil) },
    "after" => client.balance("reject").balance_text,
  )
end
"""


def test_rejected_amounts_raise_mapped_class(server: Any) -> None:
    output = run_ruby_json(REJECTIONS_SCRIPT, server.endpoint)

    for case in ("too_many_decimals", "negative", "zero", "not_a_number"):
        assert output[case]["raised"] == "ZmqBalance::RequestError", (case, output[case])
        assert output[case]["code"] == "invalid_amount", (case, output[case])
    assert 'account="reject"' in output["too_many_decimals"]["message"]
    assert 'op="plus_funds"' in output["too_many_decimals"]["message"]
    assert 'rid="r-dec"' in output["too_many_decimals"]["message"]

    assert output["overdraft"]["raised"] == "ZmqBalance::InsufficientFunds"
    assert output["overdraft"]["code"] == "insufficient_funds"
    assert output["overdraft"]["refused_error"] is True
    assert 'rid="r-over"' in output["overdraft"]["message"]

    for case in ("rational", "nan", "nil_account"):
        assert output[case]["raised"] == "ArgumentError", (case, output[case])
    assert output["after"] == "1.000000"


@pytest.mark.parametrize(
    "server", [{"workers": 2, "extra_args": ["--allow-negative"]}], indirect=True
)
def test_negative_balance_parsed(server: Any) -> None:
    output = run_ruby_json(
        RESULT_JSON
        + """
        ZmqBalance::Client.open(ARGV[0]) do |client|
          puts JSON.generate(result_json(client.sub_funds("overdrawn", "1.5")))
        end
        """,
        server.endpoint,
    )
    assert output["balance_text"] == "-1.500000"
    assert output["balance"] == "-1.5"


# --- request shapes, against a real server ---


def test_call_converts_symbols(server: Any) -> None:
    output = run_ruby_json(
        RESULT_JSON
        + """
        ZmqBalance::Client.open(ARGV[0]) do |client|
          changed = client.call(op: :plus_funds, account: :sym, amount: 2)
          read = client.call("op" => "balance", :account => "sym")
          pong = client.call(op: :ping)
          puts JSON.generate("changed" => result_json(changed), "read" => result_json(read),
                             "pong" => pong["pong"])
        end
        """,
        server.endpoint,
    )
    assert output["changed"]["account"] == "sym"
    assert output["changed"]["balance_text"] == "2.000000"
    assert output["read"]["count"] == 1
    assert output["pong"] is True


def test_integer_account_is_its_string(server: Any) -> None:
    output = run_ruby_json(
        RESULT_JSON
        + """
        ZmqBalance::Client.open(ARGV[0]) do |client|
          client.plus_funds(41, 1)
          puts JSON.generate(result_json(client.balance("41")))
        end
        """,
        server.endpoint,
    )
    assert output["account"] == "41"
    assert output["count"] == 1


def test_repeated_rid_replays(server: Any) -> None:
    output = run_ruby_json(
        RESULT_JSON
        + """
        ZmqBalance::Client.open(ARGV[0]) do |client|
          first = client.plus_funds("replay", 5, rid: "same-rid")
          second = client.plus_funds("replay", 5, rid: "same-rid")
          puts JSON.generate([result_json(first), result_json(second)])
        end
        """,
        server.endpoint,
    )
    first, second = output
    assert first["replay"] is False
    assert second["replay"] is True
    assert second["balance_text"] == "5.000000"
    assert second["count"] == 1
    assert second["rid"] == "same-rid"


def test_ping_returns_server_info(server: Any) -> None:
    output = run_ruby_json(
        "ZmqBalance::Client.open(ARGV[0]) { |client| puts JSON.generate(client.ping) }",
        server.endpoint,
    )
    assert output["pong"] is True
    assert output["scale"] == 6


# --- the wire encoding, against the scripted ROUTER ---


def test_amount_encoding_on_wire() -> None:
    with ScriptedRouter(lambda index, request: echo_result(request)) as router:
        run_ruby(
            """
            require "zmqbalance"
            require "bigdecimal"
            ZmqBalance::Client.open(ARGV[0]) do |client|
              client.plus_funds(7, 12)
              client.plus_funds("7", BigDecimal("12.50"))
              client.plus_funds("7", BigDecimal("1e-7"))
              client.plus_funds("7", BigDecimal("1e20"))
              client.plus_funds("7", "12.50")
              client.plus_funds("7", 0.1)
              client.plus_funds(2**64, 2**64)
            end
            """,
            router.endpoint,
        )
    amounts = [request["amount"] for request in router.requests]
    assert amounts == [
        12,
        "12.5",
        "0.0000001",
        "100000000000000000000.0",
        "12.50",
        0.1,
        str(2**64),
    ]
    assert router.requests[0]["account"] == 7
    assert router.requests[-1]["account"] == str(2**64)
    assert all(isinstance(request["rid"], str) for request in router.requests)
    assert len({request["rid"] for request in router.requests}) == len(router.requests)


def test_balance_and_ping_send_no_rid() -> None:
    def respond(index: int, request: dict[str, Any]) -> Reply:
        if request["op"] == "ping":
            return {"ok": True, "pong": True}
        return echo_result(request)

    with ScriptedRouter(respond) as router:
        run_ruby(
            'require "zmqbalance"\nZmqBalance::Client.open(ARGV[0]) { |c| c.balance(1); c.ping }',
            router.endpoint,
        )
    assert router.requests == [{"op": "balance", "account": 1}, {"op": "ping"}]


# --- Lazy Pirate retries, against the scripted ROUTER ---


def test_timeout_resends_same_rid(swallow_first: ScriptedRouter) -> None:
    output = run_ruby_json(
        RESULT_JSON
        + """
        client = ZmqBalance::Client.new(ARGV[0], timeout: 0.3, retries: 2)
        result = client.plus_funds("retry", 1)
        client.close
        puts JSON.generate(result_json(result))
        """,
        swallow_first.endpoint,
    )
    assert len(swallow_first.frames) == 2
    assert swallow_first.frames[0] == swallow_first.frames[1]
    sent_rid = swallow_first.requests[0]["rid"]
    assert output["rid"] == sent_rid
    assert output["count"] == 1


def test_caller_rid_resent(swallow_first: ScriptedRouter) -> None:
    run_ruby(
        'require "zmqbalance"\n'
        "client = ZmqBalance::Client.new(ARGV[0], timeout: 0.3, retries: 1)\n"
        'client.sub_funds("retry", "2.5", rid: "caller-rid")\n'
        "client.close",
        swallow_first.endpoint,
    )
    assert [request["rid"] for request in swallow_first.requests] == ["caller-rid"] * 2


def test_mismatched_rid_discarded() -> None:
    def respond(index: int, request: dict[str, Any]) -> Reply:
        if index == 0:
            return {**echo_result(request, count=99), "rid": "someone-else"}
        return echo_result(request, count=1)

    with ScriptedRouter(respond) as router:
        output = run_ruby_json(
            RESULT_JSON
            + """
            client = ZmqBalance::Client.new(ARGV[0], timeout: 0.3, retries: 2)
            result = client.plus_funds("mismatch", 1)
            client.close
            puts JSON.generate(result_json(result))
            """,
            router.endpoint,
        )
    assert len(router.frames) == 2
    assert router.frames[0] == router.frames[1]
    assert output["count"] == 1


def test_no_reply_raises_timeout_error() -> None:
    with ScriptedRouter(lambda index, request: None) as router:
        output = run_ruby_json(
            """
            client = ZmqBalance::Client.new(ARGV[0], timeout: 0.2, retries: 2)
            begin
              client.plus_funds("silent", 1, rid: "lost")
              puts JSON.generate("raised" => nil)
            rescue ZmqBalance::TimeoutError => e
              puts JSON.generate("raised" => e.class.name, "message" => e.message)
            ensure
              client.close
            end
            """,
            router.endpoint,
        )
    assert output["raised"] == "ZmqBalance::TimeoutError"
    assert 'rid="lost"' in output["message"]
    assert "3 attempts" in output["message"]
    assert len(router.frames) == 3
    assert len(set(router.frames)) == 1


def test_error_reply_without_rid_raised() -> None:
    def respond(index: int, request: dict[str, Any]) -> Reply:
        return {"ok": False, "error": "invalid_rid", "message": "rid is longer than 64 bytes"}

    with ScriptedRouter(respond) as router:
        output = run_ruby_json(
            """
            ZmqBalance::Client.open(ARGV[0], timeout: 0.3, retries: 1) do |client|
              client.plus_funds("rid", 1, rid: "x" * 65)
            rescue ZmqBalance::RequestError => e
              puts JSON.generate("raised" => e.class.name, "code" => e.code)
            end
            """,
            router.endpoint,
        )
    assert output == {"raised": "ZmqBalance::RequestError", "code": "invalid_rid"}
    assert len(router.frames) == 1


def test_unknown_error_code_raises_base_error() -> None:
    def respond(index: int, request: dict[str, Any]) -> Reply:
        return {"ok": False, "error": "new_code", "message": "a newer server"}

    with ScriptedRouter(respond) as router:
        output = run_ruby_json(
            """
            ZmqBalance::Client.open(ARGV[0]) do |client|
              client.balance(1)
            rescue ZmqBalance::Error => e
              puts JSON.generate("raised" => e.class.name, "code" => e.code)
            end
            """,
            router.endpoint,
        )
    assert output == {"raised": "ZmqBalance::Error", "code": "new_code"}


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "not a msgpack map"),
        (
            msgpack.packb({"ok": True, "account": "1", "balance": "x", "count": 1}),
            "invalid balance",
        ),
    ],
)
def test_malformed_reply_raises_protocol_error(reply: bytes, expected: str) -> None:
    with ScriptedRouter(lambda index, request: reply) as router:
        output = run_ruby_json(
            """
            ZmqBalance::Client.open(ARGV[0]) do |client|
              client.balance(1)
            rescue ZmqBalance::ProtocolError => e
              puts JSON.generate("raised" => e.class.name, "message" => e.message)
            end
            """,
            router.endpoint,
        )
    assert output["raised"] == "ZmqBalance::ProtocolError"
    assert expected in output["message"]


@pytest.mark.parametrize(
    ("code", "class_name"),
    [
        ("bad_request", "RequestError"),
        ("rid_conflict", "RequestError"),
        ("too_large", "RequestError"),
        ("limit_exceeded", "RefusedError"),
        ("busy", "ServerError"),
        ("unavailable", "ServerError"),
        ("internal_error", "ServerError"),
    ],
)
def test_error_code_table(code: str, class_name: str) -> None:
    output = run_ruby_json(
        f'puts JSON.generate(ZmqBalance.error_class_for("{code}").name)',
    )
    assert output == f"ZmqBalance::{class_name}"
