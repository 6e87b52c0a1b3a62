"""The shipped profiles carry the rules document's values; bad files fail loudly."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from kiosk.errors import ConfigError, InputError
from kiosk.settlement import get_profile, load_profile_file, load_profiles, profile_from_dict


def test_three_profiles_ship_with_the_documented_values():
    p = load_profiles()
    assert sorted(p) == [
        "qingdao-employee-outpatient",
        "yantai-resident-chronic-htn-dm",
        "yantai-resident-outpatient",
    ]
    qd = p["qingdao-employee-outpatient"]
    assert [qd.ratio(lv) for lv in (1, 2, 3)] == [Decimal("0.80"), Decimal("0.70"), Decimal("0.60")]
    assert [qd.deductible(lv) for lv in (1, 2, 3)] == [0, 20000, 20000]
    assert qd.cap() == 600000 and not qd.is_chronic
    yt = p["yantai-resident-outpatient"]
    assert {yt.ratio(lv) for lv in (1, 2, 3)} == {Decimal("0.65")}
    assert {yt.deductible(lv) for lv in (1, 2, 3)} == {0}
    assert yt.cap() == 40000
    ch = p["yantai-resident-chronic-htn-dm"]
    assert {ch.ratio(lv) for lv in (1, 2, 3)} == {Decimal("0.75")}
    assert {ch.deductible(lv) for lv in (1, 2, 3)} == {0}
    assert ch.cap(frozenset({"htn"})) == 60000
    assert ch.cap(frozenset({"dm"})) == 60000
    assert ch.cap(frozenset({"htn", "dm"})) == 100000
    assert all(x.class_b_selfpay_prop == Decimal("0.10") for x in p.values())


def test_unknown_profile_is_an_input_error_on_profile():
    with pytest.raises(InputError) as e:
        get_profile("nowhere")
    assert e.value.field == "profile"


def _shipped(name: str = "qingdao-employee-outpatient") -> dict:
    from kiosk.settlement.profiles import PROFILES_DIR

    return json.loads((PROFILES_DIR / f"{name}.json").read_text())


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.pop("ratio_by_level"), "missing"),
        (lambda d: d.update(extra=1), "unknown key"),
        (lambda d: d["ratio_by_level"].pop("3"), "ratio_by_level"),
        (lambda d: d["ratio_by_level"].update({"2": "1.2"}), "ratio_by_level.2"),
        (lambda d: d["ratio_by_level"].update({"2": 0.7}), "ratio_by_level.2"),
        (lambda d: d["deductible_by_level"].update({"2": "-1"}), "deductible_by_level.2"),
        (lambda d: d.update(annual_cap="abc"), "annual_cap"),
        (lambda d: d.update(annual_cap_by_conditions={"1": "1"}), "exactly one of"),
        (lambda d: d.update(conditions=["htn"]), "conditions"),
        (lambda d: d.update(class_b_selfpay_prop="2"), "class_b_selfpay_prop"),
        (lambda d: d.update(name=""), "name"),
        (lambda d: d.update(placeholders=["anual_cap"]), "placeholders"),
        (lambda d: d.update(placeholders="annual_cap"), "placeholders"),
        (lambda d: d.update(placeholders=["annual_cap", "annual_cap"]), "placeholders"),
    ],
)
def test_bad_profile_is_a_config_error(change, words):
    d = _shipped()
    change(d)
    with pytest.raises(ConfigError) as e:
        profile_from_dict(d)
    assert words in str(e.value)


def test_bad_chronic_profile_caps():
    d = _shipped("yantai-resident-chronic-htn-dm")
    d["annual_cap_by_conditions"] = {"1": "600.00"}
    with pytest.raises(ConfigError, match="annual_cap_by_conditions"):
        profile_from_dict(d)
    d = _shipped("yantai-resident-chronic-htn-dm")
    d["conditions"] = ["htn", "copd"]
    with pytest.raises(ConfigError, match="conditions"):
        profile_from_dict(d)


def test_profile_files_load_and_fail_by_file(tmp_path):
    good = tmp_path / "qingdao-employee-outpatient.json"
    good.write_text(json.dumps(_shipped()))
    assert sorted(load_profiles(tmp_path)) == ["qingdao-employee-outpatient"]
    bad = tmp_path / "broken.json"
    bad.write_text("{ not json")
    with pytest.raises(ConfigError) as e:
        load_profiles(tmp_path)
    assert "broken.json" in str(e.value) and "not valid JSON" in str(e.value)
    bad.write_text(json.dumps(_shipped()))  # name inside differs from the file name
    with pytest.raises(ConfigError, match="does not match the file name"):
        load_profile_file(bad)
    with pytest.raises(ConfigError, match="no profile files"):
        load_profiles(tmp_path / "empty")
