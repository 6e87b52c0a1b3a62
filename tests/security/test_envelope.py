"""The platform SM4/SM2 envelope: golden sign text, round trip, and tamper refusal."""
from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiosk.clock import ManualClock
from kiosk.errors import InputError, IntegrityError
from kiosk.security.envelope import ENVELOPE_FIELDS, build_envelope, canonical_data, data_key, open_envelope, sign_text
from kiosk.security.sm import Sm2PrivateKey, sm2_verify, sm4_ecb_decrypt, sm4_ecb_encrypt

APP_ID = "43AF047BBA47FC8A1AE8EFB232BDBBCB"
SECRET = "4117E877F5FA0A0188891283E4B617D5"
KEY = Sm2PrivateKey.generate()
PUB = KEY.public_key()
CLOCK = ManualClock()  # 2026-01-01 00:00 Asia/Shanghai = 1767196800000 ms
PAYLOAD = {"psn_no": "P1", "amt": 12.5, "whole": 3.0, "flag": True, "list": [{"b": 1, "a": 2}],
           "empty": "", "none": None, "no_items": [], "name": "张三"}


def _env(payload: dict = PAYLOAD) -> dict[str, str]:
    return build_envelope(payload, app_id=APP_ID, app_secret=SECRET, sm2_key=KEY, clock=CLOCK)


def _open(env: dict, **kw) -> object:
    return open_envelope(env, app_secret=SECRET, sm2_public_key=PUB, **kw)


def test_data_key_is_first_16_hex_of_sm4_of_secret() -> None:
    k = data_key(APP_ID, SECRET)
    expected = sm4_ecb_encrypt(APP_ID[:16].encode(), SECRET.encode()).hex().upper()[:16].encode()
    assert k == expected and len(k) == 16
    assert set(k.decode()) <= set("0123456789ABCDEF")
    with pytest.raises(InputError):
        data_key("short", SECRET)


def test_canonical_data_follows_platform_rules() -> None:
    assert canonical_data(PAYLOAD) == (
        '{"amt":"12.5","flag":"true","list":[{"a":2,"b":1}],"name":"张三","psn_no":"P1","whole":"3"}'
    )


def test_sign_text_golden() -> None:
    env = _env()
    text = sign_text({**{k: env[k] for k in ENVELOPE_FIELDS}, "data": PAYLOAD}, SECRET)
    assert text == (
        f"appId={APP_ID}"
        '&data={"amt":"12.5","flag":"true","list":[{"a":2,"b":1}],"name":"张三","psn_no":"P1","whole":"3"}'
        "&encType=SM4&signType=SM2&timestamp=1767196800000&version=1.0.0"
        f"&key={SECRET}"
    )
    # signData is an SM2 signature (user id 1234567812345678) over exactly that text
    assert sm2_verify(PUB, text.encode(), base64.b64decode(env["signData"]))


def test_envelope_fields_and_round_trip() -> None:
    env = _env()
    assert list(env) == list(ENVELOPE_FIELDS)
    assert env["encType"] == "SM4" and env["signType"] == "SM2" and env["timestamp"] == "1767196800000"
    assert env["encData"] == env["encData"].upper()
    plain = sm4_ecb_decrypt(data_key(APP_ID, SECRET), bytes.fromhex(env["encData"]))
    assert json.loads(plain) == PAYLOAD
    opened = _open(env, expected_app_id=APP_ID)
    assert opened.payload == PAYLOAD and opened.timestamp_ms == 1767196800000


@pytest.mark.parametrize("field", ENVELOPE_FIELDS)
def test_every_character_of_every_field_tampered_is_refused(field: str) -> None:
    env = _env({"psn_no": "P1", "amt": "9.90"})
    value = env[field]
    for i in range(len(value)):
        c = value[i]
        repl = "0" if c != "0" else "1"
        if field == "encData":
            repl = "A" if c != "A" else "B"
        bad = {**env, field: value[:i] + repl + value[i + 1:]}
        with pytest.raises(IntegrityError) as e:
            _open(bad)
        assert e.value.message and e.value.code.startswith(("envelope", "stale")), (field, i)


def test_tamper_messages_are_clear() -> None:
    env = _env()
    with pytest.raises(IntegrityError, match="signData does not verify"):
        _open({**env, "timestamp": str(int(env["timestamp"]) + 1)})
    with pytest.raises(IntegrityError, match="encData"):
        _open({**env, "encData": env["encData"][:-2]})
    with pytest.raises(IntegrityError, match="upper-case"):
        _open({**env, "encData": env["encData"].lower()})
    with pytest.raises(IntegrityError, match="missing"):
        _open({k: v for k, v in env.items() if k != "signData"})
    with pytest.raises(IntegrityError, match="signed by another key"):
        open_envelope(env, app_secret=SECRET, sm2_public_key=Sm2PrivateKey.generate().public_key())
    with pytest.raises(IntegrityError):
        open_envelope(env, app_secret=SECRET + "x", sm2_public_key=PUB)
    with pytest.raises(IntegrityError, match="expected"):
        _open(env, expected_app_id="OTHERAPPID000000")


def test_stale_envelope_refused_when_window_set() -> None:
    env = _env()
    later = ManualClock(CLOCK.now() + timedelta(seconds=301))
    with pytest.raises(IntegrityError) as e:
        _open(env, clock=later, max_skew_s=300)
    assert e.value.code == "stale"
    assert _open(env, clock=later, max_skew_s=600).payload == PAYLOAD


@settings(max_examples=20, deadline=None)
@given(payload=st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.one_of(st.text(max_size=30), st.integers(-10**9, 10**9), st.booleans(), st.none(),
              st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3), max_size=3)),
    max_size=8))
def test_round_trip_property(payload: dict) -> None:
    assert _open(_env(payload)).payload == payload
