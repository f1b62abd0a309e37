"""Accounts and the rules that change them.

Rules of this module:

- Pure logic: no sockets, threads or files. One :class:`Ledger` belongs to one worker, which is
  its only caller, so nothing here takes a lock.
- Only :meth:`Ledger.apply` decides whether a change is allowed; :meth:`Ledger.restore` re-applies
  a decision that was already journaled, without checking the rules again, so recovery gives the
  same balances even if the rules (``allow_negative``) changed between runs.
- A change that carries a request id (rid) is remembered with its outcome, successful or not. The
  same rid again returns that outcome marked as a replay and changes nothing; the same rid with
  another op, account or amount is rejected with ``rid_conflict``. The ledger remembers the last
  ``rid_window`` rids it saw and forgets the oldest first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple

from zmqbalance.money import MAX_UNITS, format_units

PLUS_FUNDS = "plus_funds"
SUB_FUNDS = "sub_funds"
BALANCE = "balance"
CHANGE_OPS = (PLUS_FUNDS, SUB_FUNDS)
RID_CONFLICT = "rid_conflict"

# Remembered rids per ledger (per worker). At about 390 bytes each (16-byte rids, measured
# with tracemalloc), 100,000 rids cost about 40 MB per worker.
DEFAULT_RID_WINDOW = 100_000

Rid = str | bytes


@dataclass(slots=True)
class Outcome:
    """The result of one command: a balance and count, or an error code and message.

    Treat it as immutable; it is not frozen only because frozen dataclasses are slower to
    create, and one is made per change.
    """

    ok: bool
    account: str
    balance: int = 0
    count: int = 0
    error: str | None = None
    message: str | None = None
    replay: bool = False


def needs_record(outcome: Outcome, rid: Rid | None) -> bool:
    """Tell whether an outcome of apply() is a new decision that the journal must keep.

    Applied changes are kept, and so are refusals that carry a rid, so that the rid replays
    the same refusal after a restart. Replays and rid conflicts decided nothing new.
    """
    if outcome.replay or outcome.error == RID_CONFLICT:
        return False
    return outcome.ok or rid is not None


class Account:
    """One account's balance in minor units and the number of changes applied to it."""

    __slots__ = ("balance", "count")

    def __init__(self, balance: int = 0, count: int = 0) -> None:
        self.balance = balance
        self.count = count

    def __repr__(self) -> str:
        return f"Account(balance={self.balance}, count={self.count})"


class RememberedRid(NamedTuple):
    op: str
    account: str
    units: int
    outcome: Outcome


class Ledger:
    """The accounts one worker owns, with their rules and the rids it remembers."""

    def __init__(
        self, scale: int, *, allow_negative: bool = False, rid_window: int = DEFAULT_RID_WINDOW
    ) -> None:
        self.scale = scale
        self.allow_negative = allow_negative
        self.rid_window = rid_window
        self.accounts: dict[str, Account] = {}
        self.rids: OrderedDict[Rid, RememberedRid] = OrderedDict()

    def __repr__(self) -> str:
        return f"<Ledger accounts={len(self.accounts)} rids={len(self.rids)} scale={self.scale}>"

    def read(self, account: str) -> Outcome:
        """Return an account's balance and count; an unknown account reads as zero."""
        state = self.accounts.get(account)
        if state is None:
            return Outcome(True, account)
        return Outcome(True, account, state.balance, state.count)

    def apply(self, op: str, account: str, units: int, rid: Rid | None = None) -> Outcome:
        """Apply one credit or debit of ``units`` minor units, or return why it was rejected.

        A repeated rid returns the first outcome with ``replay=True``; check
        ``outcome.replay`` to know that nothing was applied this time.
        """
        if rid is not None:
            remembered = self.rids.get(rid)
            if remembered is not None:
                return self._replay(remembered, op, account, units, rid)

        outcome = self._change(op, account, units)
        if rid is not None:
            self.remember(rid, op, account, units, outcome)
        return outcome

    def _change(self, op: str, account: str, units: int) -> Outcome:
        refusal = self.change(op, account, units)
        if refusal is not None:
            return refusal
        state = self.accounts[account]
        return Outcome(True, account, state.balance, state.count)

    def change(self, op: str, account: str, units: int) -> Outcome | None:
        """Apply a change that carries no rid; return None if applied, else the refusal.

        The batch path calls this directly, so that an applied change costs no Outcome.
        """
        state = self.accounts.get(account)
        balance = 0 if state is None else state.balance
        new_balance = balance + units if op == PLUS_FUNDS else balance - units

        if new_balance < 0 and not self.allow_negative:
            return self._refusal(
                account,
                "insufficient_funds",
                f"balance {format_units(balance, self.scale)} of account {account!r} is less "
                f"than the debit of {format_units(units, self.scale)}",
            )
        if not -MAX_UNITS <= new_balance <= MAX_UNITS:
            limit = MAX_UNITS if new_balance > 0 else -MAX_UNITS
            return self._refusal(
                account,
                "limit_exceeded",
                f"change of {format_units(units, self.scale)} would take account {account!r} "
                f"past the limit of {format_units(limit, self.scale)}",
            )

        if state is None:
            state = self.accounts[account] = Account()
        state.balance = new_balance
        state.count += 1
        return None

    def _refusal(self, account: str, error: str, message: str) -> Outcome:
        state = self.accounts.get(account)
        balance, count = (0, 0) if state is None else (state.balance, state.count)
        return Outcome(False, account, balance, count, error, message)

    def _replay(
        self, remembered: RememberedRid, op: str, account: str, units: int, rid: Rid
    ) -> Outcome:
        if (remembered.op, remembered.account, remembered.units) != (op, account, units):
            return Outcome(
                False,
                account,
                error=RID_CONFLICT,
                message=(
                    f"rid {rid!r} was already used for {remembered.op} of "
                    f"{format_units(remembered.units, self.scale)} on account "
                    f"{remembered.account!r}"
                ),
            )
        return replace(remembered.outcome, replay=True)

    def remember(self, rid: Rid, op: str, account: str, units: int, outcome: Outcome) -> None:
        """Store the outcome of ``rid``, forgetting the oldest rid past the window."""
        self.rids[rid] = RememberedRid(op, account, units, outcome)
        if len(self.rids) > self.rid_window:
            self.rids.popitem(last=False)

    def restore(
        self,
        op: str,
        account: str,
        units: int,
        rid: Rid | None = None,
        error: str | None = None,
        message: str | None = None,
    ) -> Outcome:
        """Re-apply a journaled decision: the change if ``error`` is None, then its rid."""
        if error is None:
            state = self.accounts.get(account)
            if state is None:
                state = self.accounts[account] = Account()
            state.balance += units if op == PLUS_FUNDS else -units
            state.count += 1
            outcome = Outcome(True, account, state.balance, state.count)
        else:
            outcome = self._refusal(account, error, message or error)
        if rid is not None:
            self.remember(rid, op, account, units, outcome)
        return outcome

    def restore_applied(self, credit: bool, account: str, units: int) -> None:
        """Re-apply a journaled change that was applied and carried no rid (recovery's bulk)."""
        state = self.accounts.get(account)
        if state is None:
            state = self.accounts[account] = Account()
        if credit:
            state.balance += units
        else:
            state.balance -= units
        state.count += 1

    def items(self) -> Iterator[tuple[str, Account]]:
        return iter(self.accounts.items())
