"""zmqbalance: a balance engine over ZeroMQ and msgpack.

The public client API is re-exported here: :class:`Client`, :class:`AsyncClient`, their
result types, and the exception tree.
"""

from zmqbalance.aio import AsyncClient
from zmqbalance.client import Client
from zmqbalance.errors import (
    BadRequest,
    Busy,
    ClientError,
    InsufficientFunds,
    InternalError,
    InvalidAccount,
    InvalidAmount,
    InvalidRid,
    LimitExceeded,
    RefusedError,
    RequestError,
    RidConflict,
    ServerError,
    TimedOut,
    TooLarge,
    Unavailable,
    UnknownOp,
    WrongPartition,
    ZmqBalanceError,
)
from zmqbalance.replies import Balance, BatchResult, ChangeResult, ServerInfo

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Balance",
    "BatchResult",
    "Busy",
    "ChangeResult",
    "Client",
    "ClientError",
    "InsufficientFunds",
    "InternalError",
    "InvalidAccount",
    "InvalidAmount",
    "InvalidRid",
    "LimitExceeded",
    "RefusedError",
    "RequestError",
    "RidConflict",
    "ServerError",
    "ServerInfo",
    "TimedOut",
    "TooLarge",
    "Unavailable",
    "UnknownOp",
    "WrongPartition",
    "ZmqBalanceError",
]
