from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from kiosk.app.screen.model import Amounts, ScreenState
from kiosk.app.screen.texts import LABELS, PHASE_PROMPTS, REASONS, catalogue, prompt_for
from kiosk.money import fen_to_yuan

CJK = re.compile(r"[\u4e00-\u9fff]")
fen = st.integers(min_value=0, max_value=5_000_000)


@given(fen, fen, fen, fen, fen)
def test_a_split_that_adds_up_is_accepted_and_one_fen_off_is_refused(f, a, m, c, cash):
    total = f + a + m + c + cash
    kw = dict(fund_pay_sumamt=fen_to_yuan(f), acct_pay=fen_to_yuan(a), acct_mulaid_pay=fen_to_yuan(m),
              credit_draw=fen_to_yuan(c), cash_pay=fen_to_yuan(cash))
    ok = Amounts(medfee_sumamt=fen_to_yuan(total), **kw)
    assert sum(ok.parts_fen().values()) == total
    with pytest.raises(ValidationError, match="must equal medfee_sumamt"):
        Amounts(medfee_sumamt=fen_to_yuan(total + 1), **kw)


@pytest.mark.parametrize("bad", ["12.5", "12", "-1.00", "1e3", "12.345", " 1.00"])
def test_amounts_are_yuan_strings_with_two_decimals(bad):
    with pytest.raises(ValidationError) as e:
        Amounts(medfee_sumamt=bad, cash_pay=bad)
    assert "medfee_sumamt" in str(e.value)


@pytest.mark.parametrize("field", ["score", "match_score", "liveness_score", "similarity"])
def test_the_screen_state_has_no_room_for_a_score(field):
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ScreenState.model_validate({"phase": "face", field: 0.87})


def test_every_text_has_chinese_and_english():
    from kiosk.app.screen.texts import RETURN_PHASE_PROMPTS, RETURN_REASONS

    for table in (PHASE_PROMPTS, REASONS, LABELS, RETURN_PHASE_PROMPTS, RETURN_REASONS):
        for key, t in table.items():
            assert t.en.strip() and t.zh.strip(), key
            if key != "lang_toggle":
                assert CJK.search(t.zh), f"{key}: zh text has no Chinese"
                assert not CJK.search(t.en), f"{key}: en text has Chinese"
    assert set(catalogue()) == {"phases", "reasons", "labels", "return_phases", "return_reasons"}


def test_every_phase_has_a_prompt():
    phases = ScreenState.model_fields["phase"].annotation.__args__  # the Literal's values
    assert set(phases) <= set(PHASE_PROMPTS)


def test_prompt_prefers_the_flows_text_then_the_reason_then_the_phase():
    own = REASONS["timeout"]
    assert prompt_for("face", "off_centre", own) == own
    assert prompt_for("face", "off_centre", None) == REASONS["off_centre"]
    assert prompt_for("face", "no_such_reason", None) == PHASE_PROMPTS["face"]
    assert prompt_for("weird_phase", None, None) == PHASE_PROMPTS["idle"]


def test_failure_reasons_tell_the_patient_what_to_do():
    # every failure advice contains an action ("请" = please) — not just a code
    from kiosk.app.screen.texts import RETURN_REASONS

    for key, t in [*REASONS.items(), *RETURN_REASONS.items()]:
        assert "请" in t.zh or "您" in t.zh, key
        assert "lease" in t.en or "You" in t.en, key


def test_people_who_cannot_pass_the_face_check_are_told_the_other_way_to_pay():
    """Face must not be the only way to pay: a spoof verdict (an elderly person, a disability) or a
    face not recognised names the insurance card or the cashier, in both languages."""
    from kiosk.app.screen.texts import REASONS

    for code in ("spoof_suspected", "not_matched", "camera_offline"):
        t = REASONS[code]
        assert "医保卡" in t.zh or "收银员" in t.zh, code
        assert "card" in t.en or "cashier" in t.en, code
