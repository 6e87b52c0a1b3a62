"""The pure state machine: legal moves, deadlines, cancel rules, prompts."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from kiosk.clock import ManualClock
from kiosk.errors import IntegrityError
from kiosk.app.flow import COMMITTING, DEFAULT_TIMEOUTS_S, TERMINAL, TRANSITIONS, Machine, State
from kiosk.app.idcard import check_char, valid_id_number
from kiosk.app.prompts import REASONS, STATE_PROMPTS, reason_prompt

HAPPY = [State.FACE_CAPTURE, State.LIVENESS, State.MATCH, State.PRESETTLED, State.CONFIRM,
         State.SETTLING, State.PRINTING, State.DONE]


def machine(**kw):
    snaps = []
    clock = ManualClock()
    m = Machine("s1", "o1", clock, on_change=snaps.append, **kw)
    return m, clock, snaps


def test_happy_path_publishes_each_state_in_order():
    m, _, snaps = machine()
    for s in HAPPY:
        m.go(s)
    assert [x.state for x in snaps] == ["bill_received"] + [str(s) for s in HAPPY]
    assert [x.seq for x in snaps] == list(range(1, len(HAPPY) + 2))
    assert snaps[-1].terminal and snaps[-1].deadline is None
    assert snaps[3].prompt_zh == STATE_PROMPTS["match"].zh


def test_first_visit_path_and_id_retry():
    m, _, _ = machine()
    for s in [State.FACE_CAPTURE, State.LIVENESS, State.MATCH, State.ID_ENTRY, State.ACTIVATION]:
        m.go(s)
    m.go(State.ID_ENTRY, reason="id_mismatch", reason_args={"left": 2})
    snap = m.snapshot()
    assert snap.reason == "id_mismatch" and "2" in snap.reason_en and "2" in snap.reason_zh
    m.go(State.ACTIVATION)
    m.go(State.PRESETTLED)


def test_illegal_transitions_are_refused():
    m, _, _ = machine()
    with pytest.raises(IntegrityError):
        m.go(State.SETTLING)  # cannot skip face, match and confirm
    m.go(State.FACE_CAPTURE)
    with pytest.raises(IntegrityError):
        m.go(State.MATCH)  # no match without liveness


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(State)), max_size=20))
def test_any_sequence_only_follows_the_table(moves):
    m, _, _ = machine()
    for to in moves:
        before = m.state
        try:
            m.go(to)
        except IntegrityError:
            assert to not in TRANSITIONS[before]
            assert m.state == before
        else:
            assert to in TRANSITIONS[before]
    # settling can only ever be reached through confirm
    states = [s for s, _ in m.history]
    if State.SETTLING in states:
        assert states[states.index(State.SETTLING) - 1] == State.CONFIRM


@pytest.mark.parametrize("state", [s for s in State if s not in TERMINAL])
def test_every_live_state_has_a_timeout(state):
    assert DEFAULT_TIMEOUTS_S[state] > 0


def test_timeout_per_state():
    m, clock, _ = machine(timeouts={State.FACE_CAPTURE: 5})
    m.go(State.FACE_CAPTURE)
    clock.advance(seconds=4.9)
    assert not m.expired() and 0 < m.seconds_left() <= 0.1 + 1e-9
    clock.advance(seconds=0.2)
    assert m.expired()
    m.finish_timeout()
    assert m.state == State.FAILED and m.reason == "timeout" and m.info["timed_out_in"] == "face_capture"


def test_deadline_restarts_on_each_state():
    m, clock, _ = machine(timeouts={State.FACE_CAPTURE: 5, State.LIVENESS: 5})
    m.go(State.FACE_CAPTURE)
    clock.advance(seconds=4)
    m.go(State.LIVENESS)
    clock.advance(seconds=4)
    assert not m.expired()


@pytest.mark.parametrize("state", [s for s in State if s not in TERMINAL and s not in COMMITTING])
def test_cancel_is_honoured_before_money_moves(state):
    m, _, _ = machine()
    path = {State.BILL_RECEIVED: [], State.PHONE_ENTRY: [State.FACE_CAPTURE, State.LIVENESS, State.MATCH,
                                                         State.PHONE_ENTRY],
            State.ID_ENTRY: [State.FACE_CAPTURE, State.LIVENESS, State.MATCH, State.ID_ENTRY],
            State.ACTIVATION: [State.FACE_CAPTURE, State.LIVENESS, State.MATCH, State.ID_ENTRY, State.ACTIVATION]}
    for s in path.get(state, HAPPY[:HAPPY.index(state) + 1] if state in HAPPY else []):
        m.go(s)
    assert m.state == state
    assert m.request_cancel("cashier")
    m.finish_cancelled()
    assert m.state == State.CANCELLED and m.reason == "cancelled_by_cashier"


@pytest.mark.parametrize("state", sorted(COMMITTING))
def test_cancel_and_timeout_are_refused_once_money_moves(state):
    m, clock, _ = machine()
    for s in HAPPY[:HAPPY.index(state) + 1]:
        m.go(s)
    assert not m.request_cancel("patient")
    clock.advance(hours=1)
    with pytest.raises(IntegrityError):
        m.finish_timeout()
    with pytest.raises(IntegrityError):
        m.finish_cancelled()


def test_unknown_reason_is_a_bug():
    m, _, _ = machine()
    with pytest.raises(IntegrityError):
        m.fail("something_vague")
    with pytest.raises(IntegrityError):
        m.prompt("also_vague")


def test_ended_session_cannot_end_again():
    m, _, _ = machine()
    m.fail("not_matched")
    with pytest.raises(IntegrityError):
        m.fail("timeout")
    assert not m.request_cancel()


_CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize("code", sorted(REASONS))
def test_every_reason_has_chinese_and_english_texts(code):
    p = reason_prompt(code, left=2, minutes=30, visit="500.00", day="1000.00", until="2027-03-01", n=4,
                      line_zh="家人（尾号 0042）的额度", line_en="the family line of holder …0042", pick_zh="", pick_en="",
                      which="H37020200001")
    assert _CJK.search(p.zh), code
    assert p.en and p.en[0].isupper() and not _CJK.search(p.en), code
    assert "{" not in p.zh and "{" not in p.en


def test_reason_formats_tries_and_minutes():
    assert "30" in reason_prompt("id_locked", minutes=30).en
    assert "1 tries" in reason_prompt("id_mismatch", left=1).en


def test_snapshot_json_has_what_the_screen_needs():
    m, _, _ = machine()
    m.go(State.FACE_CAPTURE)
    m.prompt("too_dark")
    d = m.snapshot().to_dict()
    assert d["state"] == "face_capture" and d["reason"] == "too_dark"
    assert d["reason_text"]["zh"] == REASONS["too_dark"].zh
    assert set(d) >= {"session_id", "order_id", "seq", "prompt", "amounts", "deadline", "terminal"}


def test_id_number_checksum():
    assert valid_id_number("11010519491231002X")  # the GB 11643 worked example
    assert not valid_id_number("110105194912310021")
    assert not valid_id_number("1101051949123100")
    assert check_char("11010519491231002") == "X"


# what a return session must never tell the patient: a return gives back, it never pays or charges
PAY_WORDS = ("pay", "Pay", "PAY", "支付", "扣款", "charged", "付款")


@pytest.mark.parametrize("kind", ["return", "return_cashier"])
def test_a_return_session_never_shows_a_payment_prompt(kind):
    """Every state a return can be in and every reason it can show (with its arguments) reads as a
    return in both languages: "Press Enter to pay" and "nothing was charged" never appear."""
    from datetime import datetime

    from kiosk.app.prompts import state_prompt
    from kiosk.clock import SHANGHAI

    for st in State:
        p = state_prompt(str(st), kind)
        assert not any(w in p.zh + p.en for w in PAY_WORDS), (kind, st, p)
        assert _CJK.search(p.zh) and not _CJK.search(p.en), (kind, st)
    from kiosk.app.prompts import REGISTER_REASONS, REVOKE_REASONS

    for code in REASONS:
        if code in REGISTER_REASONS or code in REVOKE_REASONS:
            continue  # a visit's registration only (its mandate's terms), a revocation by face only
        p = reason_prompt(code, kind=kind, left=2, minutes=30)
        assert not any(w in p.zh + p.en for w in PAY_WORDS), (kind, code, p)
        assert _CJK.search(p.zh) and p.en[0].isupper() and "{" not in p.zh + p.en, (kind, code)
    # and the machine of a return session publishes those texts, from its very first snapshot
    snaps: list = []
    m = Machine("s1", "return/R1", ManualClock(datetime(2026, 3, 10, 10, 0, tzinfo=SHANGHAI)), on_change=snaps.append,
                kind=kind)
    m.go(State.PRESETTLED if kind == "return_cashier" else State.FACE_CAPTURE)
    m.fail("not_matched")
    for sn in snaps:
        assert not any(w in sn.prompt_zh + sn.prompt_en + (sn.reason_zh or "") + (sn.reason_en or "")
                       for w in PAY_WORDS), sn
    assert snaps[0].info["kind"] == "return"
    if kind == "return":
        assert "收银员" in snaps[-1].reason_zh and "cashier" in snaps[-1].reason_en  # the fallback is named
    # a payment still reads as one
    assert "pay" in state_prompt("confirm").en


def test_a_registration_session_never_says_it_pays():
    """A visit's registration charges nothing: its states read as a registration, never "Press Enter to
    pay" / "Payment complete"; the confirm step's hint is the mandate's terms."""
    from kiosk.app.prompts import REGISTER_REASONS, state_prompt

    for st in (State.BILL_RECEIVED, State.PRESETTLED, State.CONFIRM, State.SETTLING, State.PRINTING, State.DONE,
               State.FAILED, State.CANCELLED):
        p = state_prompt(str(st), "register")
        assert not any(w in p.zh + p.en for w in ("Press Enter to pay", "Payment complete", "Paying", "正在支付",
                                                   "支付成功")), (st, p)
    for code in REGISTER_REASONS:
        p = reason_prompt(code, visit="500.00", day="1000.00", until="2027-03-04", n=4, line_zh="本人额度",
                          line_en="your own line", pick_zh="", pick_en="")
        assert "500.00" in p.en and "500.00" in p.zh and "{" not in p.zh + p.en


def test_a_revocation_session_never_says_it_pays():
    """The patient revoking her mandates by face moves no money: its states and reasons never read as a
    payment, and the confirm step names how many mandates and where."""
    from kiosk.app.prompts import REVOKE_REASONS, state_prompt

    for st in (State.BILL_RECEIVED, State.PRESETTLED, State.CONFIRM, State.SETTLING, State.PRINTING, State.DONE,
               State.FAILED, State.CANCELLED):
        p = state_prompt(str(st), "revoke")
        assert not any(w in p.zh + p.en for w in ("Press Enter to pay", "Payment complete", "Paying", "正在支付",
                                                   "支付成功")), (st, p)
        assert _CJK.search(p.zh) and not _CJK.search(p.en), st
    for code in REVOKE_REASONS:
        p = reason_prompt(code, n=2, which="H37020200001, H37020200002")
        assert "{" not in p.zh + p.en and _CJK.search(p.zh) and not _CJK.search(p.en)
        assert not any(w in p.zh + p.en for w in ("pay in cash", "支付成功")), code
    p = reason_prompt("mandate_revoke_list", n=2, which="H37020200001, H37020200002")
    assert all("H37020200002" in t and "2" in t for t in (p.zh, p.en)) and "Enter" in p.en
