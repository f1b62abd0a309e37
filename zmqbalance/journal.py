"""The journal interface that a worker commits each group of changes through.

A worker applies a drained group of commands to its ledger, hands the resulting records to
:meth:`Journal.append`, calls :meth:`Journal.sync`, and only then sends the replies. A record is
the decision about one change: ``(op, account, units, rid, error, message)``, where ``error`` is
None for an applied change and a wire error code for a refused change that carried a rid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from zmqbalance.ledger import Rid

Record = tuple[str, str, int, "Rid | None", "str | None", "str | None"]


class Journal(Protocol):
    """Where a worker makes its decisions durable before it replies."""

    def append(self, records: Sequence[Record]) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


class NullJournal:
    """The in-memory engine's journal: keeps nothing, so a restart starts from zero."""

    def append(self, records: Sequence[Record]) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass
