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


# --- Golden vectors from an independent implementation of the platform's public JS client
# (tests/security/vectors/platform_client.js on sm-crypto 0.3.13, run by hand with node): same
# data key, byte-identical encData (non-ASCII sent as \u escapes), the same sign text, and its
# SM2 signature verifies here. Private key: the GB/T 32918 example d for sm2p256v1.
REF_D = 0x3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8
REF_DATA = {"psn_no": "37000000000000000001", "psn_name": "张三", "note": "😀", "medfee_sumamt": 268.5, "cnt": 0,
            "acct_used_flag": False, "empty": "", "none": None, "no_items": [], "ext": {},
            "feedetl": [{"pric": "26.85", "feedetl_sn": "0001"}], "nested": {"z": 1, "a": None}}
REF_TEXT_DATA = ('{"acct_used_flag":"false","cnt":"0","ext":{},"feedetl":[{"feedetl_sn":"0001","pric":"26.85"}],'
                 '"medfee_sumamt":"268.5","nested":{"z":1,"a":null},"note":"😀","psn_name":"张三",'
                 '"psn_no":"37000000000000000001"}')
REF_VECTORS = [  # appId, appSecret, data key, encData, signData
    ("43AF047BBA47FC8A1AE8EFB232BDBBCB", "4117E877F5FA0A0188891283E4B617D5", "863B5F40C70B71EA",
    "75A71648CB61AD7F269BF3FD394141A441A6A0406AAB7EAEBDDDF2A6D8034B0EB6CD16EFD9FF40B6941686043BD80FC88DD9"
    "F831B0B651F564FA357BD892145280267A2BFC8E77F33D315FD03128FA17B8037B7CD717381E2F964BFB7E03F3F44FDD0182"
    "9CAA4B3E0A07F22054122D1169B61948624B10988FC665F69BD7B6E6BD7199CD3C4170F4DCEB5B90435B9A3516758263FBC4"
    "6D4DAAECD83D13B0112B2DAD7B4C0D23D8CBE71E187E40FC2C149DA0EE5E6351B56916CAD54552F4280FFEB2B2F7366F8791"
    "7ED2E4BD0CCE77957016FF77B0202598681BDD2FE2B12EBA53E28C96B993DC89FC7A0C9ABC58985D491DA3F24FB84A7386AC"
    "83DBA4A170F6",
     "ugK999fWoTsORgzkf43n1Eoms8TVJXDas8ZtJKSQMzwTZfb1XHB6UULrxKc3zbMM3DdJmewpNAI4p8B+AuenRA=="),
    ("T98HPCGN5ZVVQBS8LZQNOAEXVI9GYHKQ", "short", "5B49905A960BE22D",  # secret under one block: padded
    "F08E4B741EF1A0F5F42D08113075343EF4E08BAAEFB8C9F1A9B1696589050067A162DAF34C063CFBD6D8B8670932D0A2EB59"
    "B76E0EB396058FC29664D2189DD8C9B52222D79A7AF9E41AF4991435605486C66B1BEDFA31C1DF12C2433D48D445FFACA520"
    "2DC3241BCF566B7A5A5A30A41E8125468CB844B9E9D9F8928D1B91B2C651D9D38797875B774FFA4316938F2673199C4A1E54"
    "BEC4C02A6A03973E0D59CFD5BF6A31B02DDF6F62D75873C97F7130BA0DA163A55117BE2C46DEEC8602541FD078E555E81315"
    "981BF7F1F504FE79AF4A23829750EEB891A04E4517DD99D6F27A26AF0C86D80D18D64AAA936E540B4B84FF5701AB9F9ECA42"
    "5B9DFE009915",
     "4RBYOiWYB8DGzPhUyJKF4HIbCKb2X4DSSy6daILWyavma8zMEwG9PaZuUGwXk1fxMPjYdh+7/iSHksJwob7lSA=="),
]


@pytest.mark.parametrize("app_id,secret,dk,enc,sig", REF_VECTORS)
def test_matches_the_platform_client_reference(app_id: str, secret: str, dk: str, enc: str, sig: str) -> None:
    key = Sm2PrivateKey(REF_D)
    assert data_key(app_id, secret) == dk.encode("ascii")
    env = build_envelope(REF_DATA, app_id=app_id, app_secret=secret, sm2_key=key, clock=CLOCK)
    assert env["encData"] == enc
    text = sign_text({**{k: env[k] for k in ENVELOPE_FIELDS}, "data": REF_DATA}, secret)
    assert text == (f"appId={app_id}&data={REF_TEXT_DATA}&encType=SM4&signType=SM2&timestamp=1767196800000"
                    f"&version=1.0.0&key={secret}")
    # the reference's own envelope (its signature, its encData) opens here
    ref = {**env, "signData": sig}
    assert open_envelope(ref, app_secret=secret, sm2_public_key=key.public_key()).payload == REF_DATA
    with pytest.raises(IntegrityError):
        open_envelope({**ref, "version": "1.0.1"}, app_secret=secret, sm2_public_key=key.public_key())
