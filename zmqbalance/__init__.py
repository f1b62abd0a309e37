"""zmqbalance: a balance engine over ZeroMQ and msgpack.

The public client API is re-exported here: :class:`Client`, its result types, and the
exception tree.
"""

from zmqbalance.client import Balance, Client, ServerInfo
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
    Unavailable,
    UnknownOp,
    ZmqBalanceError,
)

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "Balance",
    "Busy",
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
    "Unavailable",
    "UnknownOp",
    "ZmqBalanceError",
]
