"""The HTTP API of the old Go balance service, translated into engine requests.

Routes, all GET, with query parameters:

    /balance?action=plus_funds&account_id=1&amount=1   credit; 200, text/plain body "ok"
    /balance?action=sub_funds&account_id=1&amount=1    debit;  200, text/plain body "ok"
    /account_balance?account_id=1                      200, JSON
        {"account_id": "1", "balance": "0.000000", "count": 2000}

The old service served one change path per locking strategy (``/balance`` with one global
mutex, ``/balancemx2`` with one mutex per account). Here every account has one owner thread,
so the variants behave the same: any path made of ``/balance`` and then letters, digits or
underscores (``/balance``, ``/balancemx``, ``/balancemx2``) is a change path. Other paths get
404, and methods other than GET get 405.

``action`` must be ``plus_funds`` or ``sub_funds``: the old service debited on any other
value, and this one returns 400 instead. Parameters other than ``action``, ``account_id`` and
``amount`` are ignored; a parameter given twice is ambiguous and gets 400. ``amount`` is passed
to the engine as its decimal text, never as a float. Every failure has a JSON body
``{"error": "<code>", "message": "..."}`` and changes nothing; see :data:`STATUS_BY_ERROR`.

Server choice: asyncio with h11. h11 is a small, strict, well-tested HTTP/1.1 state machine
without I/O of its own, so it runs on the same event loop, engine bridge and connection
handling as the line gateway. It handles keep-alive, pipelined requests, HTTP/1.0 and
``Connection: close`` correctly, and its limits reject oversized headers. A connection waiting
for an engine reply costs a coroutine, not a thread, so hundreds of open keep-alive
connections are cheap, and all of them share one DEALER socket to the engine.
``http.server.ThreadingHTTPServer`` would need one thread and one ZeroMQ socket per
connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from http import HTTPStatus
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import h11

from zmqbalance.gateways.base import READ_CHUNK_BYTES, Gateway

log = logging.getLogger(__name__)

_BAD_PERCENT_ESCAPE = re.compile("%(?![0-9A-Fa-f]{2}).{0,2}")
MAX_HEADER_BYTES = 16 * 1024  # request line plus headers
MAX_BODY_BYTES = 64 * 1024  # the API takes no body; a small one is read and ignored
MAX_QUERY_FIELDS = 32
KEEP_ALIVE_TIMEOUT = 60.0  # seconds an idle connection stays open between requests
CHANGE_PATH = re.compile(r"/balance[A-Za-z0-9_]*")
BALANCE_PATH = "/account_balance"
CHANGE_ACTIONS = ("plus_funds", "sub_funds")
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"

STATUS_BY_ERROR = {
    "bad_request": 400,
    "unknown_op": 400,
    "invalid_account": 400,
    "invalid_amount": 400,
    "invalid_rid": 400,
    "too_large": 400,
    "rid_conflict": 409,
    "insufficient_funds": 409,
    "limit_exceeded": 409,
    "busy": 503,
    "unavailable": 503,
    "timed_out": 504,
    "internal_error": 500,
}


class Response(NamedTuple):
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class EngineCall(NamedTuple):
    """A request to send to the engine and the route whose reply format it needs."""

    request: dict[str, Any]
    path: str


def error_response(status: int, code: str, message: str, **headers: str) -> Response:
    body = json.dumps({"error": code, "message": message}).encode()
    return Response(status, JSON, body, tuple(headers.items()))


def plan(method: str, target: str) -> EngineCall | Response:
    """Map a request line to an engine request, or to the error response it gets without one."""
    url = urlsplit(target)
    path = url.path
    if path != BALANCE_PATH and not CHANGE_PATH.fullmatch(path):
        return error_response(
            404, "not_found", f"no route for {path[:80]!r}; expected /balance or /account_balance"
        )
    if method != "GET":
        return error_response(
            405, "method_not_allowed", f"{path} takes GET, not {method[:20]}", Allow="GET"
        )

    bad_escape = _BAD_PERCENT_ESCAPE.search(url.query)
    if bad_escape:
        return error_response(
            400, "bad_request", f"the query string has an invalid escape {bad_escape.group()!r}"
        )
    try:
        fields = parse_qsl(
            url.query, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_FIELDS
        )
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        return error_response(400, "bad_request", f"the query string is invalid: {exc}")
    parameters: dict[str, str] = {}
    for name, value in fields:
        if name in parameters:
            return error_response(400, "bad_request", f"parameter {name!r} is given more than once")
        parameters[name] = value

    if path == BALANCE_PATH:
        return _plan_balance(path, parameters)
    return _plan_change(path, parameters)


def _plan_balance(path: str, parameters: dict[str, str]) -> EngineCall | Response:
    if "account_id" not in parameters:
        return error_response(400, "bad_request", "missing parameter 'account_id'")
    return EngineCall({"op": "balance", "account": parameters["account_id"]}, path)


def _plan_change(path: str, parameters: dict[str, str]) -> EngineCall | Response:
    for name in ("action", "account_id", "amount"):
        if name not in parameters:
            return error_response(400, "bad_request", f"missing parameter {name!r}")
    action = parameters["action"]
    if action not in CHANGE_ACTIONS:
        return error_response(
            400, "unknown_op", f"unknown action {action[:40]!r}; expected plus_funds or sub_funds"
        )
    request = {"op": action, "account": parameters["account_id"], "amount": parameters["amount"]}
    return EngineCall(request, path)


def render(call: EngineCall, reply: dict[str, Any]) -> Response:
    """Turn the engine's reply into the old service's response for that route."""
    if reply.get("ok") is not True:
        code = str(reply.get("error"))
        headers = {"Retry-After": "1"} if code in ("busy", "unavailable") else {}
        message = str(reply.get("message", ""))
        return error_response(STATUS_BY_ERROR.get(code, 500), code, message, **headers)
    if call.path != BALANCE_PATH:
        return Response(200, TEXT, b"ok")
    document = {
        "account_id": reply["account"],
        "balance": reply["balance"],
        "count": reply["count"],
    }
    return Response(200, JSON, json.dumps(document).encode())


class HttpGateway(Gateway):
    """Serves the old HTTP API on a TCP port."""

    kind = "http"

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        while not self.stopping:
            try:
                event = await self._next_event(connection, reader, KEEP_ALIVE_TIMEOUT)
            except h11.RemoteProtocolError as exc:
                await self._reject(connection, writer, exc)
                return
            except asyncio.TimeoutError:
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed, or the client closed between requests

            async with self.busy():
                response = await self._handle(connection, reader, event)
                await self._send(connection, writer, response, head=event.method == b"HEAD")
            if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                return
            connection.start_next_cycle()

    async def _handle(
        self, connection: h11.Connection, reader: asyncio.StreamReader, request: h11.Request
    ) -> Response:
        try:
            await self._discard_body(connection, reader)
        except h11.RemoteProtocolError as exc:
            return error_response(exc.error_status_hint, "bad_request", str(exc))
        except _BodyTooLarge:
            return error_response(
                413, "too_large", f"request body is over {MAX_BODY_BYTES} bytes; send none"
            )
        except asyncio.TimeoutError:
            return error_response(
                408, "timed_out", f"request body not received within {KEEP_ALIVE_TIMEOUT} s"
            )

        header_bytes = len(request.target) + sum(
            len(name) + len(value) + 4 for name, value in request.headers
        )
        if header_bytes > MAX_HEADER_BYTES:
            return error_response(
                431, "too_large", f"request line and headers are over {MAX_HEADER_BYTES} bytes"
            )

        target = request.target.decode("ascii", "replace")
        step = plan(request.method.decode("ascii", "replace"), target)
        if isinstance(step, Response):
            self.stats.errors += 1
            return step
        assert self.bridge is not None
        self.stats.commands += 1
        reply = await self.bridge.request(step.request)
        if reply.get("ok") is not True:
            self.stats.errors += 1
        return render(step, reply)

    async def _next_event(
        self, connection: h11.Connection, reader: asyncio.StreamReader, timeout: float | None
    ) -> Any:
        while True:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await asyncio.wait_for(reader.read(READ_CHUNK_BYTES), timeout)
            connection.receive_data(data)

    async def _discard_body(self, connection: h11.Connection, reader: asyncio.StreamReader) -> None:
        received = 0
        while True:
            event = await self._next_event(connection, reader, KEEP_ALIVE_TIMEOUT)
            if isinstance(event, h11.Data):
                received += len(event.data)
                if received > MAX_BODY_BYTES:
                    raise _BodyTooLarge
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return

    async def _send(
        self,
        connection: h11.Connection,
        writer: asyncio.StreamWriter,
        response: Response,
        *,
        head: bool = False,
    ) -> None:
        """Send ``response``; to a HEAD request only its headers, as HTTP requires."""
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
        ]
        if self.stopping or connection.their_state is not h11.DONE:
            headers.append(("Connection", "close"))
        reason = HTTPStatus(response.status).phrase.encode()
        events: list[Any] = [
            h11.Response(status_code=response.status, headers=headers, reason=reason)
        ]
        if not head:
            events.append(h11.Data(data=response.body))
        events.append(h11.EndOfMessage())
        for event in events:
            data = connection.send(event)
            if data:
                writer.write(data)
        await writer.drain()

    async def _reject(
        self, connection: h11.Connection, writer: asyncio.StreamWriter, exc: h11.RemoteProtocolError
    ) -> None:
        """Answer a request h11 cannot parse, if a response can still be sent, then close."""
        log.debug("http gateway: malformed request: %s", exc)
        self.stats.errors += 1
        if connection.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = error_response(exc.error_status_hint, "bad_request", str(exc))
        try:
            await self._send(connection, writer, response)
        except h11.LocalProtocolError as send_error:
            log.debug("http gateway: could not send the error response: %s", send_error)


class _BodyTooLarge(Exception):
    """The request body passed MAX_BODY_BYTES."""
