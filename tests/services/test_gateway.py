"""Hostile bodies at the services' door (the pure-ASGI fast path for POST /fsi/api/*, the FastAPI
routes behind it, and real uvicorn): deeply nested JSON, huge numbers and strings, bytes that are not
UTF-8, inside the envelope and inside its encrypted payload. Every one is a refusal naming the field,
HTTP 400 (or a sealed 1001 answer for a verified message), never 200/9999 and never a traceback."""
from __future__ import annotations

import base64
import json
import logging
import secrets
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from kiosk.security.envelope import data_key, sign_text
from kiosk.security.sm import Sm2PrivateKey, sm2_sign, sm4_ecb_encrypt
from kiosk.services.envelope import MAX_BODY
from kiosk.services.http import admin_token
from kiosk.services.protocol import InfCode

from .conftest import INSTITUTION, Centre

DEEP = 10_000
MAX_JSON_DEPTH = 32  # kiosk.services.protocol.MAX_JSON_DEPTH (checked below)


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


def _nest(n: int, inner: str = "1") -> str:
    return "[" * n + inner + "]" * n


HOSTILE_BODIES = {
    "deep_array": ("[" * DEEP).encode(),
    "deep_closed_array": _nest(DEEP).encode(),
    "deep_object": ('{"a":' * DEEP + "1" + "}" * DEEP).encode(),
    "deep_in_appId": ('{"appId":' + _nest(DEEP) + "}").encode(),
    "deep_enough_to_parse": ('{"appId":"X","encData":' + _nest(MAX_JSON_DEPTH + 8) + "}").encode(),
    "huge_int": ('{"appId":1' + "0" * 5000 + "}").encode(),
    "big_int": ('{"appId":"KIOSKTEST0000000000","timestamp":1' + "0" * 40 + "}").encode(),
    "inf_float": b'{"appId":1e999}',
    "nan": b'{"appId":NaN}',
    "infinity": b'{"appId":"KIOSKTEST0000000000","x":-Infinity}',
    "not_utf8": b'{"appId":"\xff\xfe"}',
    "utf16": json.dumps({"appId": "KIOSKTEST0000000000"}).encode("utf-16"),
    "huge_appId": json.dumps({"appId": "A" * 200_000}).encode(),
    "too_big": b'{"appId":"' + b"A" * (MAX_BODY + 10) + b'"}',
    "lone_surrogate": b'{"appId":"\\ud800\\ud800"}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_hostile_bodies_are_400_naming_the_field_without_a_traceback(centre: Centre, name: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = TestClient(centre.http.app, raise_server_exceptions=False)  # the fast path, as deployed
    r = client.post("/fsi/api/1101", content=HOSTILE_BODIES[name])
    assert r.status_code in (400, 401), (r.status_code, r.text[:300])
    body = r.json()
    assert body["infcode"] in (InfCode.INVALID_INPUT, InfCode.UNKNOWN_TERMINAL), body
    assert body["infcode"] != InfCode.INTERNAL and body["err_field"], body
    assert len(r.content) < 2000  # nothing of the body is echoed back
    _no_tracebacks(caplog)


def test_the_depth_and_number_refusals_say_so(centre: Centre) -> None:
    post = centre.http.post
    deep = post("/fsi/api/1101", content=HOSTILE_BODIES["deep_in_appId"]).json()
    assert deep["err_field"] == "body" and "nested" in deep["err_msg"]
    shallow = post("/fsi/api/1101", content=HOSTILE_BODIES["deep_enough_to_parse"]).json()
    assert shallow["err_field"].startswith("encData[0]") and "nested" in shallow["err_msg"], shallow
    assert post("/fsi/api/1101", content=HOSTILE_BODIES["big_int"]).json()["err_field"] == "timestamp"
    assert post("/fsi/api/1101", content=HOSTILE_BODIES["not_utf8"]).json()["err_msg"] == "body: is not UTF-8 text"


def _raw_envelope(c: Centre, plaintext: str, signed_data: str) -> dict[str, str]:
    """An envelope built by hand around any plaintext (the real client cannot serialise 10,000 levels)."""
    ts = str(int(c.clock.now().timestamp() * 1000))
    fields = {"appId": c.app_id, "encType": "SM4", "signType": "SM2", "timestamp": ts, "version": "1.0.0"}
    text = sign_text(fields, c.app_secret).replace("&encType=", f"&data={signed_data}&encType=", 1)
    sig = sm2_sign(c.key, text.encode(), b"1234567812345678")
    enc = sm4_ecb_encrypt(data_key(c.app_id, c.app_secret), plaintext.encode()).hex().upper()
    return {**fields, "encData": enc, "signData": base64.b64encode(sig).decode()}


def test_an_encrypted_payload_nested_too_deep_to_read_is_400_on_encData(centre: Centre,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    msgid = centre.client.new_msgid()
    inner = f'"infno":"1101","input":{{"data":{_nest(DEEP)}}},"msgid":"{msgid}","nonce":"{secrets.token_hex(16)}"'
    e = _raw_envelope(centre, "{" + inner + "}", "{" + inner + "}")
    r = TestClient(centre.http.app, raise_server_exceptions=False).post("/fsi/api/1101", json=e)
    assert r.status_code == 400, r.text[:300]
    assert r.json()["infcode"] == InfCode.INVALID_INPUT and r.json()["err_field"] == "encData"
    _no_tracebacks(caplog)


@pytest.mark.parametrize("data,field", [
    ({"data": json.loads(_nest(MAX_JSON_DEPTH + 5))}, "input.data[0]"),
    ({"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": 10**30}}, "input.data.mdtrt_cert_no"),
    ({"data": {"x": [[[[{"y": -(10**19)}]]]]}}, "input.data.x[0][0][0][0].y"),
])
def test_a_verified_payload_too_deep_or_with_absurd_numbers_is_1001_naming_the_field(
        centre: Centre, data: dict, field: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a = centre.client.call("1101", data)
    assert a.infcode == InfCode.INVALID_INPUT and a.err_code == "invalid_input", a
    assert a.err_msg.startswith(field), a.err_msg
    _no_tracebacks(caplog)


def test_real_http_on_both_services_answers_400_and_logs_no_traceback(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn in this process, so its error log is captured: the old code logged
    'Exception in ASGI application' with a RecursionError traceback here."""
    from kiosk.app.runtime import ServerThread
    from kiosk.services.bank.app import create_app as bank_app
    from kiosk.services.centre.app import create_app as centre_app
    from tests.app.conftest import free_port

    caplog.set_level(logging.DEBUG)
    for make, db, infno in ((centre_app, "c.db", "1101"), (bank_app, "b.db", "credit.line")):
        port = free_port()
        server = ServerThread(make(f"sqlite:///{tmp_path / db}", data_dir=tmp_path), port=port).start()
        try:
            for name in ("deep_array", "deep_in_appId", "huge_int", "not_utf8"):
                r = httpx.post(f"http://127.0.0.1:{port}/fsi/api/{infno}", content=HOSTILE_BODIES[name], timeout=10)
                assert r.status_code == 400 and r.json()["infcode"] == InfCode.INVALID_INPUT, (make, name, r.text)
            tok = admin_token(tmp_path)
            r = httpx.post(f"http://127.0.0.1:{port}/admin/terminals", headers={"x-admin-token": tok},
                           content=HOSTILE_BODIES["deep_object"], timeout=10)
            assert r.status_code == 400 and r.json()["infcode"] == InfCode.INVALID_INPUT
        finally:
            server.stop()
    _no_tracebacks(caplog)


# ---------------------------------------------------------------- terminal registration

KEY = Sm2PrivateKey.generate().public_key().to_bytes().hex()
GOOD = {"app_id": "KIOSK-0123456789AB", "sm2_public": KEY, "fixmedins_code": INSTITUTION}


@pytest.mark.parametrize("change,field", [
    ({"app_id": "SHORTAPPID12345"}, "app_id"),                # 15 characters: the data key needs 16
    ({"app_id": "KIOSK-0123&key=AB"}, "app_id"),              # a separator of the signed text
    ({"app_id": "KIOSK 0123456789AB"}, "app_id"),
    ({"app_id": "KIOSK-０１２３４５６７８９"}, "app_id"),         # non-ASCII: not 16 bytes of key
    ({"app_id": "K" * 65}, "app_id"),
    ({"sm2_public": "04" + "00" * 64}, "sm2_public"),         # not a point on the curve
    ({"sm2_public": KEY[:-2] + ("00" if KEY[-2:] != "00" else "01")}, "sm2_public"),
    ({"sm2_public": "zz" * 65}, "sm2_public"),
    ({"sm2_public": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n" + " " * 100}, "sm2_public"),
    ({"fixmedins_code": "H3702020000"}, "fixmedins_code"),    # 11 characters
    ({"fixmedins_code": "X37020200001"}, "fixmedins_code"),
    ({"fixmedins_code": "H37020200001 "}, "fixmedins_code"),
    ({"app_secret": "short"}, "app_secret"),
    ({"app_secret": "a secret with spaces in it"}, "app_secret"),
])
def test_admin_registration_refuses_what_could_never_work_with_422_naming_the_field(
        centre: Centre, change: dict, field: str) -> None:
    tok = admin_token(_data_dir(centre))
    body = {**GOOD, "app_id": "KIOSK-" + secrets.token_hex(6).upper(), **change}
    r = centre.http.post("/admin/terminals", headers={"x-admin-token": tok}, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["infcode"] == InfCode.INVALID_INPUT and r.json()["err_field"] == field, r.json()
    assert centre.gateway.terminal(body["app_id"]) is None  # nothing stored


def test_admin_registration_of_a_good_terminal_still_works(centre: Centre) -> None:
    tok = admin_token(_data_dir(centre))
    body = {**GOOD, "app_id": "KIOSK-" + secrets.token_hex(6).upper()}
    r = centre.http.post("/admin/terminals", headers={"x-admin-token": tok}, json=body)
    assert r.status_code == 200 and r.json()["output"]["app_id"] == body["app_id"]
    assert len(r.json()["output"]["app_secret"]) >= 16


def _data_dir(c: Centre) -> Path:
    return Path(c.service.keys.store.path).parent.parent


def test_the_gateway_itself_refuses_a_bad_registration() -> None:
    from kiosk.services import protocol
    from kiosk.services.gateway import check_registration

    assert protocol.MAX_JSON_DEPTH == MAX_JSON_DEPTH
    with pytest.raises(Exception) as e:
        check_registration("SHORT", "x" * 32, KEY, INSTITUTION)
    assert getattr(e.value, "field", None) == "app_id"


def test_cli_register_terminal_validates_before_storing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from kiosk.cli import main

    base = ["services", "register-terminal", "--data-dir", str(tmp_path), "--sm2-public", KEY,
            "--fixmedins-code", INSTITUTION]
    assert main(base + ["--app-id", "SHORT-APP-ID-15"]) == 2
    err = capsys.readouterr().err
    assert "--app-id" in err and "16" in err and "Traceback" not in err
    assert not (tmp_path / "centre.db").exists() and not (tmp_path / "bank.db").exists()  # nothing written
    assert main(base[:-1] + ["H123", "--app-id", "KIOSK-0123456789AB"]) == 2
    assert "--fixmedins-code" in capsys.readouterr().err
    bad_key = [a if a != KEY else "04" + "11" * 64 for a in base]
    assert main(bad_key + ["--app-id", "KIOSK-0123456789AB"]) == 2
    assert "--sm2-public" in capsys.readouterr().err
    (tmp_path / "dir.pem").mkdir()
    as_dir = [a if a != KEY else str(tmp_path / "dir.pem") for a in base]
    assert main(as_dir + ["--app-id", "KIOSK-0123456789AB"]) == 2
    assert "--sm2-public" in capsys.readouterr().err
    assert main(base + ["--app-id", "KIOSK-0123456789AB"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["app_id"] == "KIOSK-0123456789AB" and set(out["service_keys"]) == {"centre", "bank"}
