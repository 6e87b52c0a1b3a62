"""Signed heartbeats: accepted from the registered terminal only; every refusal is the same 401."""
from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.security.replay import RequestSigner

from .conftest import TOKEN, Fleet


def _post(fleet: Fleet, body: bytes, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    return fleet.client.post("/v1/heartbeat", content=body, headers={"Content-Type": "application/json", **headers})


def test_beat_is_stored_with_state_and_history(fleet: Fleet) -> None:
    a = fleet.terminal("KIOSK-A0001")
    a.status.periph["paper"] = "low"
    a.status.unresolved = 2
    a.counts.session("paid")
    a.counts.session("failed", "spoof_suspected")
    ans = a.beat()
    assert ans is not None and ans["accepted"] and ans["next_beat_s"] == 60
    t = fleet.svc.terminals()[0]
    assert (t["terminal_id"], t["paper"], t["unresolved"], t["state"]) == ("KIOSK-A0001", "low", 2, "ok")
    rows = fleet.svc.db.read(lambda tx: tx.fetch_all(
        "SELECT seq, sessions, failures, liveness_rejects FROM fleet_heartbeats"))
    assert rows == [(1, 2, 1, 1)]
    # the counts were reset once the beat was accepted
    a.beat()
    assert fleet.svc.db.read(lambda tx: tx.fetch_all("SELECT sessions FROM fleet_heartbeats ORDER BY seq"))[-1] == (0,)


def test_bad_signature_unknown_revoked_replay_and_impersonation_get_the_same_401(fleet: Fleet) -> None:
    a = fleet.terminal("KIOSK-A0002")
    b = fleet.terminal("KIOSK-B0002")
    body, _, _ = a.build()
    good = a.signer.headers("POST", "/v1/heartbeat", body)
    assert _post(fleet, body, good).status_code == 200
    answers = []
    # replay of the very same request
    answers.append(_post(fleet, body, good))
    # bad signature: another key signs in A's name
    forger = RequestSigner(Ed25519PrivateKey.generate(), device_id="KIOSK-A0002", key_id="v0001-test", clock=fleet.clock)
    body2, _, _ = a.build()
    answers.append(_post(fleet, body2, forger.headers("POST", "/v1/heartbeat", body2)))
    # body altered after signing
    h = a.signer.headers("POST", "/v1/heartbeat", body2)
    answers.append(_post(fleet, body2.replace(b'"seq":', b'"seq": '), h))
    # unknown terminal
    stranger = RequestSigner(Ed25519PrivateKey.generate(), device_id="KIOSK-NOBODY", key_id="v0001-test",
                             clock=fleet.clock)
    body3 = body2.replace(b"KIOSK-A0002", b"KIOSK-NOBODY")
    answers.append(_post(fleet, body3, stranger.headers("POST", "/v1/heartbeat", body3)))
    # B signs correctly but reports as A
    body4 = json.dumps({**json.loads(body2), "seq": 99}).encode()
    answers.append(_post(fleet, body4, b.signer.headers("POST", "/v1/heartbeat", body4)))
    # same seq again with a fresh nonce (a replay to another worker after the nonce window)
    body5, _, _ = a.build()
    d = json.loads(body5)
    d["seq"] = 1
    body5 = json.dumps(d).encode()
    answers.append(_post(fleet, body5, a.signer.headers("POST", "/v1/heartbeat", body5)))
    # revoked terminal
    assert fleet.admin("POST", "/admin/terminals/KIOSK-B0002/revoke").status_code == 200
    body6, _, _ = b.build()
    answers.append(_post(fleet, body6, b.signer.headers("POST", "/v1/heartbeat", body6)))
    # stale timestamp
    fleet.clock.advance(minutes=10)
    body7, _, _ = a.build()
    stale = a.signer.headers("POST", "/v1/heartbeat", body7)
    fleet.clock.advance(minutes=-20)
    answers.append(_post(fleet, body7, stale))
    assert [r.status_code for r in answers] == [401] * len(answers)
    assert len({r.content for r in answers}) == 1, "a refusal says nothing about why"
    # only the first beat was stored
    assert fleet.svc.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM fleet_heartbeats")) == 1


def test_malformed_and_personal_fields_are_refused_at_the_door(fleet: Fleet) -> None:
    a = fleet.terminal("KIOSK-A0003")
    body, _, _ = a.build()
    d = json.loads(body)
    for bad in ({**d, "psn_no": "37020200000001"},
                {**d, "counts": {**d["counts"], "sessions": [{"outcome": "failed", "reason": "x110101199003077777",
                                                              "n": 1}]}},
                {**d, "versions": {**d["versions"], "model_pack": "not-a-sha"}},
                {**d, "peripherals": {**d["peripherals"], "face": "jpeg"}}):
        raw = json.dumps(bad).encode()
        r = _post(fleet, raw, a.signer.headers("POST", "/v1/heartbeat", raw))
        assert r.status_code == 422, bad
    assert fleet.svc.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM fleet_heartbeats")) == 0


def test_admin_routes_need_the_operator_token(fleet: Fleet) -> None:
    reg = {"terminal_id": "KIOSK-X0001", "institution": "H1", "district": "370202", "key_id": "k1",
           "public_key": "00" * 32}
    for headers in ({}, {"X-Admin-Token": "wrong"}):
        assert fleet.client.post("/admin/terminals", json=reg, headers=headers).status_code == 401
        assert fleet.client.get("/admin/terminals", headers=headers).status_code == 401
        assert fleet.client.post("/admin/terminals/KIOSK-X0001/revoke", headers=headers).status_code == 401
        assert fleet.client.post("/admin/rollouts/1/halt", headers=headers).status_code == 401
    assert fleet.admin("POST", "/admin/terminals", json=reg).status_code == 200
    # a terminal's signed request is no operator
    a = fleet.terminal("KIOSK-A0004")
    h = a.signer.headers("GET", "/admin/terminals", b"")
    assert fleet.client.get("/admin/terminals", headers=h).status_code == 401
    # the page without a token goes to the login form
    r = fleet.client.get("/fleet/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/fleet/login"


def test_rekey_resets_the_sequence_and_old_key_is_refused(fleet: Fleet) -> None:
    a = fleet.terminal("KIOSK-A0005")
    assert a.beat() is not None and a.beat() is not None
    b = fleet.terminal("KIOSK-A0005")  # re-provisioned: new key, seq starts again at 1
    assert b.beat() is not None
    assert a.beat() is None


def test_group_commit_keeps_each_beats_own_checks(fleet: Fleet) -> None:
    a, b = fleet.terminal("KIOSK-G0001"), fleet.terminal("KIOSK-G0002")

    def prep(agent, seq=None):  # type: ignore[no-untyped-def]
        body, _, _ = agent.build()
        if seq is not None:
            d = json.loads(body)
            d["seq"] = seq
            body = json.dumps(d).encode()
        return fleet.svc.prepare(body, agent.signer.headers("POST", "/v1/heartbeat", body))

    a1, a2, b1 = prep(a), prep(a), prep(b)
    b_old = prep(b, seq=1)  # same seq as b1, fresh nonce: only one of them may be stored
    res = fleet.svc.store_batch([a1, a2, b1, b_old])
    assert [type(r).__name__ for r in res] == ["dict", "dict", "dict", "Refused"]
    seqs = fleet.svc.db.read(lambda tx: tx.fetch_all(
        "SELECT terminal_id, seq FROM fleet_heartbeats ORDER BY terminal_id, seq"))
    assert seqs == [("KIOSK-G0001", 1), ("KIOSK-G0001", 2), ("KIOSK-G0002", 1)]
    # a batch where one terminal was revoked meanwhile: the others are stored
    a3, b2 = prep(a), prep(b)
    fleet.svc.revoke("KIOSK-G0002")
    res = fleet.svc.store_batch([b2, a3])
    assert [type(r).__name__ for r in res] == ["Refused", "dict"]


def test_every_admin_route_refuses_without_the_operator_token(fleet: Fleet) -> None:
    routes = [(m, r.path) for r in fleet.app.routes if getattr(r, "path", "").startswith("/admin")  # type: ignore[attr-defined]
              for m in getattr(r, "methods", ())]
    assert len(routes) >= 9
    a = fleet.terminal("KIOSK-ADM01")
    for method, path in routes:
        url = path.replace("{terminal_id}", "KIOSK-ADM01").replace("{rollout_id}", "1").replace("{action}", "halt")
        for headers in ({}, {"X-Admin-Token": TOKEN + "x"}, a.signer.headers(method, url, b"")):
            r = fleet.client.request(method, url, headers=headers, json={} if method == "POST" else None)
            assert r.status_code in (401, 422), (method, url, r.status_code)
            if r.status_code == 422:  # the body is checked first; the same call with a good body still needs the token
                assert method == "POST"
    assert fleet.svc.terminals()[0]["status"] == "active"


def test_oversized_beat_and_republished_sha_with_other_metadata(fleet: Fleet) -> None:
    a = fleet.terminal("KIOSK-BIG01")
    big = b'{"terminal_id":"KIOSK-BIG01","pad":"' + b"x" * 70_000 + b'"}'
    r = fleet.client.post("/v1/heartbeat", content=big, headers=a.signer.headers("POST", "/v1/heartbeat", big))
    assert r.status_code == 413
    import base64

    from kiosk.fleet import artifacts as art

    blob = b"\x00model pack bytes" * 10
    s = art.sign_artifact(fleet.operator_key, "model_pack", "v1", blob)
    body = {"kind": "model_pack", "version": "v1", "sha256": s.sha256, "signature": s.signature,
            "blob_b64": base64.b64encode(blob).decode()}
    assert fleet.admin("POST", "/admin/artifacts", json=body).json()["created"] is True
    assert fleet.admin("POST", "/admin/artifacts", json=body).json()["created"] is False  # same again: no-op
    s2 = art.sign_artifact(fleet.operator_key, "model_pack", "v2", blob)
    assert fleet.admin("POST", "/admin/artifacts", json={**body, "version": "v2",
                                                          "signature": s2.signature}).status_code == 409
    assert fleet.admin("POST", "/admin/rollouts", json={"artifact_sha256": "0" * 64,
                                                        "kind": "model_pack"}).status_code == 404
