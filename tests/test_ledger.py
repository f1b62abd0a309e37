from zmqbalance.ledger import PLUS_FUNDS, SUB_FUNDS, Ledger, Outcome
from zmqbalance.money import MAX_UNITS


def test_read_unknown_account_is_zero() -> None:
    ledger = Ledger(6)
    assert ledger.read("nobody") == Outcome(True, "nobody", 0, 0)
    assert "nobody" not in ledger.accounts


def test_credit_then_debit() -> None:
    ledger = Ledger(6)
    credit = ledger.apply(PLUS_FUNDS, "a", 5_000_000)
    debit = ledger.apply(SUB_FUNDS, "a", 2_000_000)
    assert credit == Outcome(True, "a", 5_000_000, 1)
    assert debit == Outcome(True, "a", 3_000_000, 2)
    assert ledger.read("a") == Outcome(True, "a", 3_000_000, 2)


def test_debit_to_exactly_zero() -> None:
    ledger = Ledger(6)
    ledger.apply(PLUS_FUNDS, "a", 7)
    assert ledger.apply(SUB_FUNDS, "a", 7) == Outcome(True, "a", 0, 2)


def test_insufficient_funds_changes_nothing() -> None:
    ledger = Ledger(6)
    ledger.apply(PLUS_FUNDS, "a", 100_000_000)
    outcome = ledger.apply(SUB_FUNDS, "a", 100_000_001)
    assert outcome.ok is False
    assert outcome.error == "insufficient_funds"
    assert outcome.message is not None
    assert "100.000000" in outcome.message
    assert "100.000001" in outcome.message
    assert ledger.read("a") == Outcome(True, "a", 100_000_000, 1)


def test_debit_unknown_account_creates_nothing() -> None:
    ledger = Ledger(6)
    outcome = ledger.apply(SUB_FUNDS, "a", 1)
    assert outcome.error == "insufficient_funds"
    assert "a" not in ledger.accounts


def test_allow_negative_debit() -> None:
    ledger = Ledger(6, allow_negative=True)
    assert ledger.apply(SUB_FUNDS, "a", 5_000_000) == Outcome(True, "a", -5_000_000, 1)


def test_credit_past_limit_rejected() -> None:
    ledger = Ledger(6)
    ledger.apply(PLUS_FUNDS, "a", MAX_UNITS)
    outcome = ledger.apply(PLUS_FUNDS, "a", 1)
    assert outcome.ok is False
    assert outcome.error == "limit_exceeded"
    assert outcome.message is not None
    assert "9223372036854.775807" in outcome.message
    assert ledger.read("a") == Outcome(True, "a", MAX_UNITS, 1)


def test_negative_debit_past_limit_rejected() -> None:
    ledger = Ledger(6, allow_negative=True)
    ledger.apply(SUB_FUNDS, "a", MAX_UNITS)
    outcome = ledger.apply(SUB_FUNDS, "a", 1)
    assert outcome.error == "limit_exceeded"
    assert outcome.message is not None
    assert "limit of -9223372036854.775807" in outcome.message
    assert ledger.read("a") == Outcome(True, "a", -MAX_UNITS, 1)


def test_rid_replay_returns_first_outcome() -> None:
    ledger = Ledger(6)
    first = ledger.apply(PLUS_FUNDS, "a", 10, rid=b"r1")
    again = ledger.apply(PLUS_FUNDS, "a", 10, rid=b"r1")
    assert first.replay is False
    assert again.replay is True
    assert again.balance == 10
    assert again.count == 1
    assert ledger.read("a").count == 1


def test_rid_replay_of_refusal() -> None:
    ledger = Ledger(6)
    first = ledger.apply(SUB_FUNDS, "a", 10, rid="r1")
    ledger.apply(PLUS_FUNDS, "a", 100)
    again = ledger.apply(SUB_FUNDS, "a", 10, rid="r1")
    assert first.error == "insufficient_funds"
    assert again.error == "insufficient_funds"
    assert again.replay is True
    assert ledger.read("a").balance == 100


def test_rid_conflict() -> None:
    ledger = Ledger(6)
    ledger.apply(PLUS_FUNDS, "a", 10, rid="r1")
    for op, account, units in ((SUB_FUNDS, "a", 10), (PLUS_FUNDS, "b", 10), (PLUS_FUNDS, "a", 11)):
        outcome = ledger.apply(op, account, units, rid="r1")
        assert outcome.error == "rid_conflict"
        assert outcome.message is not None
        assert "'r1'" in outcome.message
    assert ledger.read("a") == Outcome(True, "a", 10, 1)
    assert "b" not in ledger.accounts


def test_str_and_bytes_rids_differ() -> None:
    ledger = Ledger(6)
    ledger.apply(PLUS_FUNDS, "a", 10, rid="r1")
    outcome = ledger.apply(PLUS_FUNDS, "a", 10, rid=b"r1")
    assert outcome.replay is False
    assert outcome.count == 2


def test_rid_window_forgets_oldest() -> None:
    ledger = Ledger(6, rid_window=2)
    for rid in ("r1", "r2", "r3"):
        ledger.apply(PLUS_FUNDS, "a", 1, rid=rid)
    assert list(ledger.rids) == ["r2", "r3"]
    assert ledger.apply(PLUS_FUNDS, "a", 1, rid="r1").replay is False
    assert ledger.apply(PLUS_FUNDS, "a", 1, rid="r3").replay is True
    assert ledger.read("a").count == 4


def test_restore_skips_rules() -> None:
    ledger = Ledger(6)
    outcome = ledger.restore(SUB_FUNDS, "a", 5, rid="r1")
    assert outcome == Outcome(True, "a", -5, 1)
    assert ledger.apply(SUB_FUNDS, "a", 5, rid="r1").replay is True


def test_restore_refusal_remembers_rid() -> None:
    ledger = Ledger(6)
    ledger.restore(SUB_FUNDS, "a", 5, rid="r1", error="insufficient_funds", message="too little")
    again = ledger.apply(SUB_FUNDS, "a", 5, rid="r1")
    assert again.error == "insufficient_funds"
    assert again.message == "too little"
    assert again.replay is True
    assert "a" not in ledger.accounts
