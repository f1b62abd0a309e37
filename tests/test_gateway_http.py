"""The HTTP gateway: routing without sockets, then a real server over HTTP/1.0 and 1.1."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from typing import Any

import pytest

from tests.conftest import ServerFactory
from tests.gatewayproc import GATEWAY_ARGS, REPLY_TIMEOUT, LineConnection, gateway_address
from tests.serverproc import ServerProcess
from zmqbalance import Client
from zmqbalance.gateways.http import EngineCall, Response, plan, render

WORKLOAD_TIMEOUT = 120.0  # seconds for 6,000 requests on new connections


@pytest.fixture
def gateways(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(*GATEWAY_ARGS)


@pytest.fixture
def http_address(gateways: ServerProcess) -> tuple[str, int]:
    return gateway_address(gateways, "http")


def get(
    address: tuple[str, int], target: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """Send one request on a new connection and return status, headers and body."""
    connection = http.client.HTTPConnection(*address, timeout=REPLY_TIMEOUT)
    try:
        connection.request(method, target)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def read_balance(address: tuple[str, int], account: str) -> dict[str, Any]:
    status, headers, body = get(address, f"/account_balance?account_id={account}")
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    document: dict[str, Any] = json.loads(body)
    return document


# Routing, no sockets.


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/", 404),
        ("GET", "/balance/", 404),
        ("GET", "/balances/x", 404),
        ("GET", "/account_balance/1", 404),
        ("POST", "/balance?action=plus_funds&account_id=1&amount=1", 405),
        ("PUT", "/account_balance?account_id=1", 405),
        ("GET", "/balance?account_id=1&amount=1", 400),
        ("GET", "/balance?action=plus_funds&amount=1", 400),
        ("GET", "/balance?action=plus_funds&account_id=1", 400),
        ("GET", "/balance?action=withdraw&account_id=1&amount=1", 400),
        ("GET", "/balance?action=&account_id=1&amount=1", 400),
        ("GET", "/balance?action=plus_funds&account_id=1&amount=1&amount=2", 400),
        ("GET", "/balance?action=plus_funds&account_id=%ff&amount=1", 400),
        ("GET", "/account_balance", 400),
    ],
)
def test_plan_rejects_without_engine(method: str, target: str, status: int) -> None:
    step = plan(method, target)
    assert isinstance(step, Response)
    assert step.status == status
    assert step.content_type == "application/json"
    assert set(json.loads(step.body)) == {"error", "message"}


@pytest.mark.parametrize("path", ["/balance", "/balancemx", "/balancemx2", "/balance_rw"])
def test_plan_change_paths(path: str) -> None:
    step = plan("GET", f"{path}?action=sub_funds&account_id=1&amount=0.50&_=123")
    assert step == EngineCall({"op": "sub_funds", "account": "1", "amount": "0.50"}, path)


def test_plan_balance_path() -> None:
    step = plan("GET", "/account_balance?account_id=abc%20d")
    assert step == EngineCall({"op": "balance", "account": "abc d"}, "/account_balance")


def test_render_replies() -> None:
    success = {"ok": True, "account": "1", "balance": "0.000000", "count": 2000}
    change = EngineCall({"op": "plus_funds"}, "/balance")
    assert render(change, success) == Response(200, "text/plain; charset=utf-8", b"ok")

    read = render(EngineCall({"op": "balance"}, "/account_balance"), success)
    assert read.body == b'{"account_id": "1", "balance": "0.000000", "count": 2000}'

    refused = render(change, {"ok": False, "error": "insufficient_funds", "message": "low"})
    assert refused.status == 409
    assert json.loads(refused.body) == {"error": "insufficient_funds", "message": "low"}

    busy = render(change, {"ok": False, "error": "busy", "message": "queue full"})
    assert busy.status == 503
    assert ("Retry-After", "1") in busy.headers


# A real server process over HTTP.


def test_http_ten_client_workload(gateways: ServerProcess, http_address: tuple[str, int]) -> None:
    problems: list[str] = []
    barrier = threading.Barrier(10, timeout=WORKLOAD_TIMEOUT)

    def client() -> None:
        barrier.wait()
        for _ in range(100):
            for account in (0, 1, 2):
                for action in ("plus_funds", "sub_funds"):
                    target = f"/balance?action={action}&amount=1&account_id={account}"
                    status, _, body = get(http_address, target)
                    if (status, body) != (200, b"ok"):
                        problems.append(f"{target}: {status} {body!r}")

    threads = [threading.Thread(target=client) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WORKLOAD_TIMEOUT)
        assert not thread.is_alive(), "a workload client did not finish"
    assert problems == []

    for account in ("0", "1", "2"):
        expected = {"account_id": account, "balance": "0.000000", "count": 2000}
        assert read_balance(http_address, account) == expected
    with LineConnection(gateway_address(gateways, "line")) as connection:
        for account in ("0", "1", "2"):
            assert connection.command(f"BALANCE {account}") == "0.000000 2000"


def test_http_change_and_read(http_address: tuple[str, int]) -> None:
    assert get(http_address, "/balance?action=plus_funds&account_id=h1&amount=0.1")[2] == b"ok"
    assert get(http_address, "/balancemx2?action=plus_funds&account_id=h1&amount=0.2")[2] == b"ok"
    assert get(http_address, "/balancemx?action=sub_funds&account_id=h1&amount=0.3")[2] == b"ok"
    assert read_balance(http_address, "h1") == {
        "account_id": "h1",
        "balance": "0.000000",
        "count": 3,
    }
    assert read_balance(http_address, "never-used")["count"] == 0


@pytest.mark.parametrize(
    "target",
    [
        "/balance?action=plus_funds&account_id=bad",
        "/balance?action=plus_funds&amount=1",
        "/balance?account_id=bad&amount=1",
        "/balance?action=withdraw&account_id=bad&amount=1",
        "/balance?action=plus_funds&account_id=bad&amount=-1",
        "/balance?action=plus_funds&account_id=bad&amount=0",
        "/balance?action=plus_funds&account_id=bad&amount=abc",
        "/balance?action=plus_funds&account_id=bad&amount=1e3",
        "/balance?action=plus_funds&account_id=bad&amount=0.0000001",
        "/balance?action=plus_funds&account_id=bad&amount=",
        "/balance?action=plus_funds&account_id=bad&amount=1&amount=2",
        "/balance?action=plus_funds&account_id=&amount=1",
        "/balance?action=plus_funds&account_id=%01bad&amount=1",
        "/balance?action=plus_funds&account_id=" + "b" * 129 + "&amount=1",
        "/account_balance",
    ],
)
def test_http_bad_parameters_change_nothing(http_address: tuple[str, int], target: str) -> None:
    status, headers, body = get(http_address, target)
    assert status == 400, body
    assert headers["Content-Type"] == "application/json"
    assert set(json.loads(body)) == {"error", "message"}
    assert read_balance(http_address, "bad") == {
        "account_id": "bad",
        "balance": "0.000000",
        "count": 0,
    }


def test_http_insufficient_funds_conflict(http_address: tuple[str, int]) -> None:
    status, _, body = get(http_address, "/balance?action=sub_funds&account_id=poor&amount=1")
    assert status == 409
    assert json.loads(body)["error"] == "insufficient_funds"
    assert read_balance(http_address, "poor")["count"] == 0


@pytest.mark.parametrize("path", ["/", "/nope", "/balance/", "/account_balance/x", "/ok"])
def test_http_unknown_path_404(http_address: tuple[str, int], path: str) -> None:
    status, _, body = get(http_address, path)
    assert status == 404
    assert json.loads(body)["error"] == "not_found"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"])
def test_http_wrong_method_405(http_address: tuple[str, int], method: str) -> None:
    status, headers, _ = get(
        http_address, "/balance?action=plus_funds&account_id=m&amount=1", method
    )
    assert status == 405
    assert headers["Allow"] == "GET"
    assert read_balance(http_address, "m")["count"] == 0


def test_http_keep_alive_connection(http_address: tuple[str, int]) -> None:
    connection = http.client.HTTPConnection(*http_address, timeout=REPLY_TIMEOUT)
    try:
        bodies = []
        sockets = set()
        for target in (
            "/balance?action=plus_funds&account_id=ka&amount=5",
            "/nope",
            "/balance?action=sub_funds&account_id=ka&amount=2",
            "/balance?action=sub_funds&account_id=ka&amount=100",
            "/account_balance?account_id=ka",
        ):
            connection.request("GET", target)
            response = connection.getresponse()
            bodies.append((response.status, response.read()))
            assert response.getheader("Connection") is None  # the server keeps it open
            sockets.add(id(connection.sock))
    finally:
        connection.close()

    assert len(sockets) == 1, "the client had to reconnect"
    assert bodies[0] == (200, b"ok")
    assert bodies[1][0] == 404
    assert bodies[2] == (200, b"ok")
    assert bodies[3][0] == 409
    assert bodies[4] == (200, b'{"account_id": "ka", "balance": "3.000000", "count": 2}')


def raw_exchange(address: tuple[str, int], data: bytes) -> bytes:
    """Send raw bytes, then read until the server closes the connection."""
    with socket.create_connection(address, timeout=REPLY_TIMEOUT) as raw:
        raw.sendall(data)
        chunks = []
        while chunk := raw.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_http_pipelined_requests_and_http10(http_address: tuple[str, int]) -> None:
    pipelined = (
        b"GET /balance?action=plus_funds&account_id=pipe&amount=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /account_balance?account_id=pipe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    reply = raw_exchange(http_address, pipelined)
    assert reply.count(b"HTTP/1.1 200 ") == 2
    assert reply.endswith(b'{"account_id": "pipe", "balance": "1.000000", "count": 1}')

    old = raw_exchange(http_address, b"GET /account_balance?account_id=pipe HTTP/1.0\r\n\r\n")
    assert old.startswith(b"HTTP/1.1 200 ")
    assert old.endswith(b'"count": 1}')


def test_http_malformed_request_400(http_address: tuple[str, int]) -> None:
    reply = raw_exchange(http_address, b"this is not http\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert b'"error": "bad_request"' in reply

    huge = b"GET /account_balance?account_id=x HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n"
    assert raw_exchange(http_address, huge).startswith(b"HTTP/1.1 431 ")
    assert read_balance(http_address, "x")["count"] == 0


def test_http_request_body_ignored_or_rejected(http_address: tuple[str, int]) -> None:
    small = (
        b"GET /balance?action=plus_funds&account_id=body&amount=1 HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert raw_exchange(http_address, small).endswith(b"\r\n\r\nok")

    large = (
        b"GET /balance?action=plus_funds&account_id=body&amount=1 HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 1000000\r\n\r\n" + b"z" * 100000
    )
    assert raw_exchange(http_address, large).startswith(b"HTTP/1.1 413 ")
    assert read_balance(http_address, "body")["count"] == 1


def test_gateways_and_client_share_accounts(gateways: ServerProcess) -> None:
    http_address = gateway_address(gateways, "http")
    with LineConnection(gateway_address(gateways, "line")) as connection:
        for _ in range(5):
            assert not connection.command("PLUS_FUNDS mixed 10.25").startswith("ERR")
    for _ in range(4):
        target = "/balance?action=sub_funds&account_id=mixed&amount=3.5"
        status, _, body = get(http_address, target)
        assert (status, body) == (200, b"ok")

    with Client(gateways.endpoint, timeout=5) as client:
        reply = client.balance("mixed")
        assert reply.balance_text == "37.250000"
        assert reply.count == 9
        client.plus_funds("mixed", "0.75")
    assert read_balance(http_address, "mixed") == {
        "account_id": "mixed",
        "balance": "38.000000",
        "count": 10,
    }
    with LineConnection(gateway_address(gateways, "line")) as connection:
        assert connection.command("BALANCE mixed") == "38.000000 10"


def test_http_head_sends_headers_only(
    gateways: ServerProcess, http_address: tuple[str, int]
) -> None:
    connection = http.client.HTTPConnection(*http_address, timeout=REPLY_TIMEOUT)
    try:
        for _ in range(3):
            connection.request("HEAD", "/account_balance?account_id=head")
            response = connection.getresponse()
            assert response.status == 405
            assert response.read() == b""
        connection.request("GET", "/account_balance?account_id=head")
        still_open = connection.getresponse()
        assert still_open.status == 200
        still_open.read()
    finally:
        connection.close()

    assert "Traceback" not in gateways.log


def test_http_oversized_headers_431(http_address: tuple[str, int]) -> None:
    connection = http.client.HTTPConnection(*http_address, timeout=REPLY_TIMEOUT)
    try:
        connection.request(
            "GET",
            "/balance?action=plus_funds&amount=1&account_id=big-header",
            headers={"X-Padding": "x" * 17_000},
        )
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()

    assert response.status == 431
    assert body["error"] == "too_large"
    assert read_balance(http_address, "big-header")["count"] == 0


def test_http_invalid_percent_escape_400(
    gateways: ServerProcess, http_address: tuple[str, int]
) -> None:
    status, _, body = get(http_address, "/balance?action=plus_funds&amount=1&account_id=%zz")

    assert status == 400
    assert "invalid escape '%zz'" in json.loads(body)["message"]
    with Client(gateways.endpoint) as client:
        assert client.balance("%zz").count == 0
