"""Both services as real uvicorn processes with 2 workers each, over loopback sockets."""
from __future__ import annotations

import secrets
import socket
from pathlib import Path

from kiosk.security.sm import Sm2PrivateKey
from kiosk.services.centre.check import check_centre
from kiosk.services.cli import start_services, stop_services
from kiosk.services.client import BankClient, CentreClient, ServiceIdentity, register_terminal, operator_call
from kiosk.services.http import admin_token
from kiosk.services.bank.app import open_lines
from kiosk.services.centre.app import build_centre
from kiosk.services.seed import seed_region, synthetic_capture, synthetic_people
from kiosk.storage import open_database

from .conftest import INSTITUTION, head, lines


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_workers_share_state_through_the_database(tmp_path: Path) -> None:
    import numpy as np

    url = f"sqlite:///{tmp_path}/svc.db"  # -> svc-centre.db and svc-bank.db
    people = synthetic_people(8, "370202")
    with open_database(f"sqlite:///{tmp_path}/svc-centre.db") as db:
        svc, _gw = build_centre(db, tmp_path)
        seed_region(db, svc.keys, 8, "370202")
    with open_database(f"sqlite:///{tmp_path}/svc-bank.db") as db:
        open_lines(db, tmp_path, [(p.psn_no, p.brdy) for p in people])
    cport, bport = _port(), _port()
    procs = start_services(url, tmp_path, workers=2, centre_port=cport, bank_port=bport)
    try:
        key = Sm2PrivateKey.generate()
        app_id = "UVTEST" + secrets.token_hex(6).upper()
        tok = admin_token(tmp_path)
        c = register_terminal(f"http://127.0.0.1:{cport}", tok, app_id, key.public_key().to_bytes().hex(), INSTITUTION)
        b = register_terminal(f"http://127.0.0.1:{bport}", tok, app_id, key.public_key().to_bytes().hex(), INSTITUTION)
        centre = CentreClient(f"http://127.0.0.1:{cport}", ServiceIdentity(app_id, c["app_secret"], key, INSTITUTION))
        bank = BankClient(f"http://127.0.0.1:{bport}", ServiceIdentity(app_id, b["app_secret"], key, INSTITUTION))
        centre.sign_in("uv")
        p = people[0]
        rng = np.random.default_rng(3)
        a = centre.activate(centre.seal_face(synthetic_capture(p.psn_no, rng), "s1", "activate"), p.certno, "s1")
        assert a.ok, a
        medfee, feedetail = lines(("XC01", "88.00", "1"))
        h = head(p, a.output["ecToken"], medfee, acct_used_flag="0")
        msgid = centre.new_msgid()
        answers = [centre.settle(h, feedetail, msgid=msgid) for _ in range(6)]  # spread over both workers
        assert all(x.output == answers[0].output for x in answers) and answers[0].ok
        setl = answers[0].output["setlinfo"]
        key_ = f"draw-{msgid}"
        draws = [bank.draw(p.psn_no, setl["psn_cash_pay"], setl["setl_id"], key_,
                           pay_auth=answers[0].output["pay_auth"]) for _ in range(4)]
        assert all(d.ok for d in draws)
        line = operator_call(f"http://127.0.0.1:{bport}", tok, "line", {"payer": p.psn_no})
        assert line["output"]["principal_outstanding"] == "88.00"
        auth = centre.authenticate(centre.seal_face(synthetic_capture(p.psn_no, rng), "s2", "auth"), "s2")
        assert auth.ok and auth.output["psn_no"] == p.psn_no  # the other worker's gallery sees the activation
        doc = centre.http.get("/openapi.json").json()
        assert "/fsi/api/2207" in doc["paths"]
    finally:
        stop_services(procs)
    with open_database(f"sqlite:///{tmp_path}/svc-centre.db") as db:
        assert check_centre(db)["balanced"]
        n = db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM centre_settlements"))
        assert n == 1
