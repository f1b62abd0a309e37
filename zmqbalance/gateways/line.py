"""The TCP line protocol of the old Go balance service, translated into engine requests.

A client sends one command per line and reads one reply line per command, in the order it sent
them. Commands, with the verb in any case (``balance 0`` works):

    PLUS_FUNDS <account> <amount>    credit; replies "<balance> <count>" after the change
    SUB_FUNDS <account> <amount>     debit;  replies "<balance> <count>" after the change
    BALANCE <account>                replies "<balance> <count>", e.g. "0.000000 2000"

Every failure replies ``ERR <code> <message>``, where ``code`` is a wire error code
(``invalid_amount``, ``insufficient_funds``, ...) and the message is one line. A success line
never starts with ``ERR``, so a client tells the two apart by the first word.

Framing rules:

- A line ends with LF; a CR right before the LF is dropped, so CRLF and LF both work. Replies
  end with LF.
- Words are separated by spaces or tabs. The account is passed to the engine as a string and
  the amount as its decimal text, so ``0.1`` stays exactly one tenth.
- A blank line is not a command and gets no reply.
- A line longer than ``MAX_LINE_BYTES`` (terminator not counted) gets
  ``ERR too_large ...`` as soon as the limit is passed; the rest of it, up to the next LF, is
  discarded and the connection stays usable.
- An unterminated line at the end of the stream is discarded, not run: a command cut short by
  a disconnect (``PLUS_FUNDS 1 100`` cut to ``PLUS_FUNDS 1 10``) must not change a balance.
- Once the gateway sees that the client disconnected, complete commands that it has read but
  not yet sent to the engine are dropped, because their replies could not be delivered.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, NamedTuple

from zmqbalance.gateways.base import READ_CHUNK_BYTES, Gateway

log = logging.getLogger(__name__)

# A valid command is at most about 210 bytes: a 128-byte account and a 64-character amount.
MAX_LINE_BYTES = 1024
TOO_LONG = object()  # framer event: a line passed MAX_LINE_BYTES
_WORD_SEPARATOR = re.compile(r"[ \t]+")
COMMANDS = {
    # verb: (op, number of arguments, usage)
    "plus_funds": ("plus_funds", 2, "PLUS_FUNDS <account> <amount>"),
    "sub_funds": ("sub_funds", 2, "SUB_FUNDS <account> <amount>"),
    "balance": ("balance", 1, "BALANCE <account>"),
}


class LineFramer:
    """Split a byte stream into lines; no I/O, so it is tested with plain bytes.

    :meth:`feed` returns the complete lines found so far, without their terminators, and
    :data:`TOO_LONG` once for each line that passed ``max_bytes``.
    """

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._discarding = False

    def __repr__(self) -> str:
        return f"<LineFramer buffered={len(self._buffer)} discarding={self._discarding}>"

    @property
    def pending(self) -> int:
        """Bytes of an unterminated line held so far."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | object]:
        events: list[bytes | object] = []
        start = 0
        while start < len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline
            self._take(data[start:end], events)
            if newline < 0:
                break
            self._end_line(events)
            start = newline + 1
        return events

    def _take(self, piece: bytes, events: list[bytes | object]) -> None:
        if self._discarding:
            return
        self._buffer += piece
        # One byte more than the limit is allowed for the CR of a CRLF terminator.
        if len(self._buffer) > self.max_bytes + 1:
            events.append(TOO_LONG)
            self._buffer.clear()
            self._discarding = True

    def _end_line(self, events: list[bytes | object]) -> None:
        if self._discarding:
            self._discarding = False
            return
        line = bytes(self._buffer)
        self._buffer.clear()
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_bytes:
            events.append(TOO_LONG)
        else:
            events.append(line)


class LineError(NamedTuple):
    """A command the gateway rejects before it reaches the engine."""

    code: str
    message: str


def parse_command(line: bytes) -> dict[str, Any] | LineError | None:
    """Turn one line into an engine request map, a LineError, or None for a blank line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return LineError("bad_request", "the line is not valid UTF-8")
    words = _WORD_SEPARATOR.split(text.strip(" \t"))
    if words == [""]:
        return None

    verb, arguments = words[0], words[1:]
    command = COMMANDS.get(verb.lower()) if verb.isascii() else None
    if command is None:
        return LineError(
            "unknown_op",
            f"unknown command {verb[:40]!r}; expected PLUS_FUNDS, SUB_FUNDS or BALANCE",
        )
    op, count, usage = command
    if len(arguments) != count:
        return LineError(
            "bad_request",
            f"wrong number of arguments for {verb.upper()}: got {len(arguments)}; usage: {usage}",
        )
    request: dict[str, Any] = {"op": op, "account": arguments[0]}
    if op != "balance":
        request["amount"] = arguments[1]
    return request


def format_reply(reply: dict[str, Any]) -> bytes:
    """Render an engine reply map as one reply line."""
    if reply.get("ok") is True:
        return f"{reply['balance']} {reply['count']}\n".encode()
    return format_error(str(reply.get("error")), str(reply.get("message", "")))


def format_error(code: str, message: str) -> bytes:
    one_line = " ".join(message.split())
    return f"ERR {code} {one_line}\n".encode()


class LineGateway(Gateway):
    """Serves the old line protocol on a TCP port."""

    kind = "line"

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        framer = LineFramer()
        while not self.stopping:
            data = await reader.read(READ_CHUNK_BYTES)
            if not data:
                if framer.pending:
                    log.debug(
                        "line gateway: discarded %d bytes of an unfinished line", framer.pending
                    )
                return
            events = framer.feed(data)
            if not events:
                continue
            async with self.busy():
                for event in events:
                    if writer.is_closing():
                        return  # the client is gone, so the rest of what it sent is dropped
                    reply = await self._answer(event)
                    if reply:
                        writer.write(reply)
                await writer.drain()

    async def _answer(self, event: bytes | object) -> bytes:
        if event is TOO_LONG:
            self.stats.errors += 1
            return format_error(
                "too_large", f"line is longer than {MAX_LINE_BYTES} bytes; it was discarded"
            )
        assert isinstance(event, bytes)
        request = parse_command(event)
        if request is None:
            return b""
        if isinstance(request, LineError):
            self.stats.errors += 1
            return format_error(request.code, request.message)

        assert self.bridge is not None
        self.stats.commands += 1
        reply = await self.bridge.request(request)
        if reply.get("ok") is not True:
            self.stats.errors += 1
        return format_reply(reply)
