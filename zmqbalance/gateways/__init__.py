"""Gateways for clients of the old Go balance service: its TCP line protocol and its HTTP API.

Each gateway is a thread with its own asyncio event loop. It translates what its clients send
into ordinary wire-contract requests on a DEALER socket connected to the engine's front end, so
an account is the same account whichever way it is reached, and no gateway touches engine
internals.
"""

from __future__ import annotations

import logging

from zmqbalance.gateways.base import START_TIMEOUT, Gateway, parse_tcp_address
from zmqbalance.gateways.http import HttpGateway
from zmqbalance.gateways.line import LineGateway

log = logging.getLogger(__name__)

__all__ = [
    "Gateway",
    "HttpGateway",
    "LineGateway",
    "check_gateway_address",
    "start_gateways",
    "stop_gateways",
]


def check_gateway_address(bind: str | None) -> None:
    """Raise ValueError now for an address a gateway could not use later."""
    if bind is not None:
        parse_tcp_address(bind)


def start_gateways(
    engine_endpoint: str, *, line_bind: str | None = None, http_bind: str | None = None
) -> list[Gateway]:
    """Start the requested gateways; raise OSError, after stopping them, if one cannot bind."""
    gateways: list[Gateway] = []
    if line_bind is not None:
        gateways.append(LineGateway(engine_endpoint, line_bind))
    if http_bind is not None:
        gateways.append(HttpGateway(engine_endpoint, http_bind))

    for gateway in gateways:
        gateway.start()
    for gateway in gateways:
        if not gateway.started.wait(START_TIMEOUT) or gateway.address is None:
            stop_gateways(gateways)
            bind = f"{gateway.host}:{gateway.port}"
            reason = gateway.bind_error or f"not listening after {START_TIMEOUT} s"
            raise OSError(f"cannot start the {gateway.kind} gateway on {bind}: {reason}")
    return gateways


def stop_gateways(gateways: list[Gateway]) -> None:
    """Stop every gateway, all at once, and wait for each thread to end."""
    for gateway in gateways:
        gateway.request_stop()
    for gateway in gateways:
        gateway.stop()
