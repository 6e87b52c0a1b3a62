"""The insurance centre as a FastAPI app (127.0.0.1:8710 by default).

    uvicorn --factory kiosk.services.centre.app:app_from_env --workers 4

Configuration (environment, so every uvicorn worker builds the same app):
`KIOSK_CENTRE_DB` (default `sqlite:///<data_dir>/centre.db`), `KIOSK_DATA_DIR`
(keys under `<data_dir>/services/centre-keys`), `KIOSK_REPLAY_WINDOW_S` (300).
"""
from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from kiosk.clock import Clock, SystemClock
from kiosk.config import load
from kiosk.errors import ConfigError
from kiosk.services.centre.schema import MIGRATIONS
from kiosk.services.centre.service import CentreService
from kiosk.services.envelope import ServiceKeys
from kiosk.services.gateway import Gateway
from kiosk.services.http import build_app
from kiosk.storage import Database, open_database
from kiosk.vision.match import MatchRule
from models.loader import load_manifest

PORT = 8710


def match_rule() -> MatchRule:
    """The operating threshold and 1:N margin the model pack was calibrated with."""
    t = load_manifest()["thresholds"]
    return MatchRule.from_thresholds(t)


def centre_db_url(data_dir: Path) -> str:
    return os.environ.get("KIOSK_CENTRE_DB") or load().database_url or f"sqlite:///{Path(data_dir) / 'centre.db'}"


def centre_keys(data_dir: Path) -> ServiceKeys:
    return ServiceKeys.open_or_init(Path(data_dir) / "services" / "centre-keys", device_id="CENTRE-0001")


def centre_public_path(data_dir: Path) -> Path:
    return Path(data_dir) / "services" / "centre-public.json"


def publish_public_key(keys: ServiceKeys, data_dir: Path) -> None:
    """Put the centre's public keys where a bank sharing this data directory pins them from
    (the bank checks pay_auth signatures with the SM2 key; GET /keys serves the same)."""
    path = centre_public_path(data_dir)
    text = json.dumps({k: v for k, v in keys.public().items() if k in ("kid", "sm2", "x25519")}, sort_keys=True)
    try:
        if path.exists() and path.read_text() == text:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f"cannot publish the centre's public key at {path}: {e.strerror}",
                          code="centre_key_unwritable", field="data_dir") from None


def build_centre(db: Database, data_dir: Path, clock: Clock | None = None,
                 window_s: int = 300) -> tuple[CentreService, Gateway]:
    db.migrate(MIGRATIONS)
    keys = centre_keys(data_dir)
    publish_public_key(keys, data_dir)
    service = CentreService(db, keys, match_rule(), return_window=timedelta(days=load().centre_return_window_days))
    gw = Gateway("centre", db, clock or SystemClock(), keys, service.routes(), window_s=window_s,
                 check_sign_no=service.check_sign_no)
    return service, gw


def warm_galleries(service: CentreService, db: Database) -> None:
    """Open the activated templates of every area before serving, not on the first face search."""
    areas = db.read(lambda tx: [r[0] for r in tx.fetch_all("SELECT DISTINCT admdvs FROM centre_institutions")])
    for a in areas:
        db.read(lambda tx, a=a: service.galleries.get(tx, a))


def create_app(db: Database | str | None = None, *, data_dir: Path | None = None, clock: Clock | None = None,
               window_s: int | None = None) -> FastAPI:
    data_dir = Path(data_dir or load().data_dir)
    if not isinstance(db, Database):
        db = open_database(db or centre_db_url(data_dir))
    window = window_s or int(load().replay_window_s)
    service, gw = build_centre(db, data_dir, clock, window)
    warm_galleries(service, db)
    app = build_app("Insurance centre (national platform transactions)", gw, data_dir,
                    description=__doc__.splitlines()[0])
    app.state.service = service
    app.state.gateway = gw
    app.state.db = db
    return app


def app_from_env() -> FastAPI:
    return create_app()
