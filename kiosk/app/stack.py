"""The whole system on one machine, as the demo, the end-to-end tests and the
bench run it: the insurance centre (8710) and the bank (8720) as their own
processes on SQLite under `data_dir`, the firmware bridge (8730) on the MCU
simulator, and the kiosk app (8740) in this process with a simulated camera.

Real parts only: services over HTTP with their envelopes, the bridge over a
pty to the simulated MCU, the face pipeline on the shared model pack.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kiosk.config import Settings, load
from kiosk.errors import ConfigError, KioskError
from kiosk.app.procs import Child, python

log = logging.getLogger("kiosk.app.stack")

FIXMEDINS = "H37020200001"   # the demo clinic (Qingdao, level 1), seeded by kiosk.services.seed
POS_SYSTEM = "demo-pos"


@dataclass
class Ports:
    centre: int = 8710
    bank: int = 8720
    bridge: int = 8730
    kiosk: int = 8740


@dataclass
class Stack:
    data_dir: Path
    ports: Ports = field(default_factory=Ports)
    settings: Settings = field(default_factory=load)
    fixmedins: str = FIXMEDINS
    children: dict[str, Child] = field(default_factory=dict)
    demo_people: list[dict[str, str]] = field(default_factory=list)
    identity: dict[str, Any] = field(default_factory=dict)
    runtime: Any = None
    server: Any = None
    camera: Any = None
    bridge: Any = None
    centre_client: Any = None
    bank_client: Any = None
    pos_key: str = ""
    pipeline: Any = None
    client_ports: dict[str, int] = field(default_factory=dict)  # the kiosk's view (e.g. through a relay)
    # the operator token of this run's services (passed to them; never written to disk)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    fleet_service: Any = None  # kiosk.app.demo.DemoFleet: the operator's fleet service in this process (demo, tests)

    # ------------------------------------------------------------------ processes
    def _env(self) -> dict[str, str]:
        return {"KIOSK_DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1",
                "KIOSK_SERVICES_ADMIN_TOKEN": self.admin_token}

    def url(self, what: str) -> str:
        return f"http://127.0.0.1:{getattr(self.ports, what)}"

    def start_centre(self) -> Child:
        c = Child("insurance centre", [python(), "-m", "uvicorn", "--factory", "kiosk.services.centre.app:app_from_env",
                                       "--host", "127.0.0.1", "--port", str(self.ports.centre), "--log-level", "warning"],
                  health_url=self.url("centre") + "/health", log_path=self.data_dir / "logs" / "centre.log",
                  env=self._env()).start()
        self.children["centre"] = c
        return c

    def start_bank(self) -> Child:
        c = Child("bank", [python(), "-m", "uvicorn", "--factory", "kiosk.services.bank.app:app_from_env",
                           "--host", "127.0.0.1", "--port", str(self.ports.bank), "--log-level", "warning"],
                  health_url=self.url("bank") + "/health", log_path=self.data_dir / "logs" / "bank.log",
                  env=self._env()).start()
        self.children["bank"] = c
        return c

    def screen_token_file(self) -> Path:
        """Where this run's kiosk app writes the screen's secret for the kiosk browser (0600)."""
        return replace(self.settings, data_dir=self.data_dir).screen_token_path()

    def screen_url(self) -> str:
        """The screen's address with this run's secret in the fragment (never sent to the server)."""
        tok = self.runtime.screen_token if self.runtime is not None else None
        return self.url("kiosk") + "/screen/" + (f"#k={tok}" if tok else "")

    def _drop_screen_token(self) -> None:
        from kiosk.app.screen.access import read_token_file

        tok = self.runtime.screen_token if self.runtime is not None else None
        if tok and read_token_file(self.screen_token_file()) == tok:  # not a newer start's
            self.screen_token_file().unlink(missing_ok=True)

    def bridge_token_file(self) -> Path:
        """Where the bridge writes its per-boot API secret: this run's data dir for a bridge we start."""
        return replace(self.settings, data_dir=self.data_dir).bridge_token_path()

    def start_bridge(self) -> Child:
        s = replace(self.settings, data_dir=self.data_dir)
        c = Child("firmware bridge", [python(), "-m", "firmware_bridge.service", "--serial", "sim",
                                      "--port", str(self.ports.bridge), "--token-file", str(s.bridge_token_path()),
                                      "--firmware-dir", str(s.bridge_firmware_path())],
                  health_url=self.url("bridge") + "/v1/status", log_path=self.data_dir / "logs" / "bridge.log",
                  env=self._env()).start()
        self.children["bridge"] = c
        return c

    # ------------------------------------------------------------------ data
    def prepare(self, fresh: bool) -> None:
        if fresh and self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # keys, databases, logs and the audit log: the service user only

    def seed_centre(self) -> list[dict[str, str]]:
        """Reference data and the named demo people (templates from the shared images, sealed)."""
        from kiosk.services.centre.app import build_centre, centre_db_url
        from kiosk.services.seed import seed_demo
        from kiosk.storage import open_database

        db = open_database(centre_db_url(self.data_dir))
        try:
            service, _gw = build_centre(db, self.data_dir)
            self.demo_people = seed_demo(db, service.keys, self.settings.demo_faces, self.face_pipeline())
        finally:
            db.close()
        (self.data_dir / "demo_people.json").write_text(json.dumps(self.demo_people, ensure_ascii=False, indent=1))
        return self.demo_people

    def face_pipeline(self) -> Any:
        if self.pipeline is None:
            from kiosk.vision.pipeline import FacePipeline

            self.pipeline = FacePipeline.from_settings(self.settings)
        return self.pipeline

    def register_terminal(self) -> dict[str, Any]:
        """The terminal's keys (kiosk.security key store) registered with both services."""
        from kiosk.security.keystore import KeyStore
        from kiosk.services.client import register_terminal

        ident_path = self.data_dir / "terminal.json"
        ks = KeyStore.open_or_init(self.data_dir / "keys", device_id="KIOSK-DEMO-000001")
        pub = ks.sm2_key().public_key().to_bytes().hex()
        token = self.admin_token
        ident: dict[str, Any] = {"app_id": ks.device_id, "fixmedins_code": self.fixmedins, "services": {}}
        for name in [n for n in ("centre", "bank") if n in self.children]:
            out = register_terminal(self.url(name), token, ks.device_id, pub, self.fixmedins)
            ident["services"][name] = {"app_secret": out["app_secret"], "keys": out["service_keys"]}
        fd = os.open(ident_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(ident, f, indent=1)
        self.identity = ident
        self._keystore = ks
        return ident

    def load_identity(self) -> dict[str, Any]:
        """The identity a previous `register_terminal` wrote (a restarted kiosk process)."""
        from kiosk.security.keystore import KeyStore

        path = self.data_dir / "terminal.json"
        if path.exists():
            self.identity = json.loads(path.read_text())
        else:  # written by `kiosk provision` (one file per registered service)
            ident: dict[str, Any] = {"services": {}}
            for name in ("centre", "bank"):
                p = self.data_dir / "provision" / f"{name}.json"
                if p.exists():
                    d = json.loads(p.read_text())
                    ident["app_id"] = d["app_id"]
                    ident["services"][name] = {"app_secret": d["app_secret"], "keys": d.get("service_keys", {})}
            state = self.data_dir / "provision" / "state.json"
            conf = json.loads(state.read_text()).get("settings", {}) if state.exists() else {}
            ident["fixmedins_code"] = conf.get("fixmedins_code") or self.fixmedins
            if not self.settings.fleet_url and conf.get("fleet_url") and conf.get("fleet_operator_pub"):
                # the fleet provisioning registered this terminal with (KIOSK_FLEET_URL overrides it)
                self.settings = replace(self.settings, fleet_url=conf["fleet_url"],
                                        fleet_operator_pub=self.settings.fleet_operator_pub or conf["fleet_operator_pub"])
            if "centre" not in ident["services"]:
                raise ConfigError(f"no terminal identity at {path} or {self.data_dir / 'provision'}: "
                                  "run `kiosk provision` first", field=str(path))
            self.identity = ident
        self.fixmedins = self.identity["fixmedins_code"]
        self._keystore = KeyStore.open(self.data_dir / "keys")
        return self.identity

    def clients(self) -> tuple[Any, Any]:
        from kiosk.services.client import BankClient, CentreClient, ServiceIdentity

        def ident(name: str) -> ServiceIdentity:
            s = self.identity["services"][name]
            k = s["keys"]
            return ServiceIdentity(app_id=self.identity["app_id"], app_secret=s["app_secret"],
                                   sm2_key=self._keystore.sm2_key(), fixmedins_code=self.fixmedins,
                                   service_sm2_public=k["sm2"], service_x25519=k["x25519"], service_kid=k["kid"])

        def via(name: str) -> str:
            return f"http://127.0.0.1:{self.client_ports[name]}" if name in self.client_ports else self.url(name)

        window = int(self.settings.replay_window_s)
        self.centre_client = CentreClient(via("centre"), ident("centre"), timeout=10.0, window_s=window)
        if "bank" in self.identity["services"]:
            self.bank_client = BankClient(via("bank"), ident("bank"), timeout=10.0, window_s=window)
        return self.centre_client, self.bank_client

    # ------------------------------------------------------------------ kiosk
    def build_kiosk(self, *, timeouts: dict[Any, float] | None = None, serve: bool = True, camera: Any = None) -> Any:
        from firmware_bridge.client import BridgeClient
        from kiosk.app.adapters.bank import BankAdapter
        from kiosk.app.adapters.bridge import BridgeKeypad, BridgeLight, BridgePrinter
        from kiosk.app.adapters.camera import ImageCamera
        from kiosk.app.adapters.centre import CentreAdapter
        from kiosk.app.adapters.vision import PipelineVision
        from kiosk.app.pos_auth import add_system
        from kiosk.app.runtime import ServerThread, build
        from kiosk.app.session import Deps
        from kiosk.storage import open_database

        centre, bank = self.centre_client, self.bank_client
        if centre is None:
            centre, bank = self.clients()
        self.bridge = BridgeClient(self.url("bridge"), token_file=self.bridge_token_file())
        self.camera = camera if camera is not None else ImageCamera()
        sim_light = getattr(self.camera, "set_fill_light", None)  # the simulated camera sees the LED's light
        vision = PipelineVision(self.kiosk_pipeline(), centre.seal_face, light=BridgeLight(self.bridge, sim_light))
        deps = Deps(camera=self.camera, vision=vision, centre=CentreAdapter(centre), bank=BankAdapter(bank),
                    keypad=BridgeKeypad(self.bridge), printer=BridgePrinter(self.bridge))
        self.pos_key = add_system(self.data_dir, POS_SYSTEM)
        from kiosk.app.pos_auth import load_systems

        db = open_database(self.settings.database_url or f"sqlite:///{self.data_dir / 'kiosk.db'}")
        from kiosk.security.audit import AuditLog

        audit = AuditLog(self.data_dir / "audit.log", self._keystore.audit_key())
        from kiosk.app.technician import TechnicianConfig

        tech = TechnicianConfig(settings=replace(self.settings, data_dir=self.data_dir), bridge_url=self.url("bridge"))
        from kiosk.app.bill_check import Catalogue

        catalogue = Catalogue(self.data_dir, deps.centre, max_age_s=self.settings.catalogue_max_age_s)
        catalogue.warm()
        self.runtime = build(db, deps, load_systems(self.data_dir), timeouts=timeouts,
                             status_probe=self._status, audit=audit.append, technician=tech, catalogue=catalogue,
                             institution=self.fixmedins)
        if self.runtime.screen_token:
            from kiosk.app.screen.access import write_token_file

            write_token_file(self.screen_token_file(), self.runtime.screen_token)
        self.runtime.start()
        self.start_fleet_agent()
        if serve:
            self.server = ServerThread(self.runtime.app, port=self.ports.kiosk).start()
        return self.runtime

    def kiosk_pipeline(self) -> Any:
        """The counter's face pipeline: on the pack the fleet agent applied last, if any (kiosk.app.fleet_link)."""
        from kiosk.app.fleet_link import pack_for

        here = replace(self.settings, data_dir=self.data_dir)  # the agent's state is under this stack's data dir
        s = pack_for(here)
        if s is here:
            return self.face_pipeline()
        from kiosk.vision.pipeline import FacePipeline
        from models.loader import load_pack

        pack = load_pack(s.model_pack, manifest=Path(s.model_pack) / "manifest.json", providers=s.onnx_providers,
                         intra_op_threads=s.onnx_threads)
        return FacePipeline(pack, detector=s.face_detector)

    def start_fleet_agent(self, *, run: bool = True) -> Any:
        """The fleet agent (heartbeats, updates when idle) when `settings.fleet_url` is set; else None.
        Stopped with the runtime."""
        from kiosk.app.fleet_link import start_fleet

        if self.runtime is None or not self.settings.fleet_url:
            return None
        s = replace(self.settings, data_dir=self.data_dir)  # fleet state and the bridge's firmware dir under it
        try:
            link = start_fleet(s, self._keystore, self.runtime.terminal, self.runtime.terminal.deps.vision,
                               self.bridge, run=run)
        except KioskError as e:  # the counter takes payments without the fleet; the operator sees it offline
            log.error("fleet agent not started: %s", e)
            return None
        self.runtime.fleet = link
        return link

    def _status(self) -> dict[str, Any]:
        try:
            b = self.bridge.status()
        except Exception:  # noqa: BLE001
            b = None
        net = True
        for name in ("centre", "bank"):
            try:
                import httpx

                httpx.get(self.url(name) + "/health", timeout=1.0).raise_for_status()
            except Exception:  # noqa: BLE001
                net = False
        return {"bridge": b, "network_ok": net, "camera_ok": self.camera is not None}

    def pos(self) -> Any:
        from kiosk.app.pos_client import PosClient

        return PosClient(self.url("kiosk"), POS_SYSTEM, self.pos_key)

    def person(self, name_or_psn: str) -> dict[str, str]:
        for p in self.demo_people:
            if name_or_psn in (p["psn_no"], p["psn_name"]):
                return p
        raise ConfigError(f"no demo person {name_or_psn!r}", field="person")

    # ------------------------------------------------------------------ shutdown
    def stop(self) -> None:
        for fn in (lambda: self.server and self.server.stop(), lambda: self.runtime and self.runtime.stop(),
                   lambda: self.bridge and self.bridge.close(), lambda: self.centre_client and self.centre_client.close(),
                   lambda: self.bank_client and self.bank_client.close(), self._drop_screen_token):
            try:
                fn()
            except Exception:  # noqa: BLE001 - best effort on the way out
                log.debug("stop step failed", exc_info=True)
        if self.fleet_service is not None:
            try:
                self.fleet_service.stop()
            except Exception:  # noqa: BLE001
                log.debug("fleet service stop failed", exc_info=True)
            self.fleet_service = None
        for c in reversed(list(self.children.values())):
            c.stop()
        self.children.clear()

