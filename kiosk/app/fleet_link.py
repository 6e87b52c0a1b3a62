"""The kiosk app's side of the fleet: `kiosk serve` runs the fleet agent when a fleet URL is set.

`start_fleet(...)` builds a `kiosk.fleet.agent.FleetAgent` signed with the terminal's
key store, reporting `TerminalStatus(terminal, bridge)` and the session counts
(`kiosk.metrics.session_listeners`), and runs it in a daemon thread until `stop()`.
No `KIOSK_FLEET_URL`: nothing is started and nothing leaves the terminal.

What an applied update does here (`Applier`), after the agent has checked the
operator signature, the sha256 and every file (always only while the terminal is idle):
- model pack: the pack is loaded in full (every digest, every model session built);
  a pack that does not load is refused and the agent switches back. The loaded
  pipeline replaces the one the counter uses at the first idle moment (now, or
  when the running/queued sessions are done), so a capture never mixes packs.
  A restarted app starts on `<fleet state>/model_pack/current` (`pack_for`).
- MCU firmware: only with `KIOSK_FLEET_FIRMWARE_INSTALL=1` (the app's user must be
  able to write the bridge's firmware directory): the image is written there under
  a bare name `fleet-<sha256[:16]>.kfw` (atomically, 0600) and the bridge's own
  install (`POST /v1/firmware`) flashes it; the MCU checks the signature again and
  keeps its running firmware when it does not verify. Without the setting, an MCU
  rollout is reported `failed` (`firmware_install_off`) and nothing is flashed.
The last day-end result comes from `<fleet state>/dayend.json`, written by
`kiosk reconcile` (its own process, the nightly timer) through `record_day_end`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kiosk.config import Settings
from kiosk.errors import ConfigError, DeviceError, KioskError

log = logging.getLogger("kiosk.app.fleet")

FIRMWARE_WAIT_S = 180.0
DAYEND_FILE = "dayend.json"


def record_day_end(settings: Settings, day: Any, result: str) -> None:
    """The last day-end's outcome (ok | mismatch | failed) where the agent reports it from
    (`<fleet state>/dayend.json`); `kiosk reconcile` writes it when a fleet is configured."""
    import json

    if result not in ("ok", "mismatch", "failed"):
        raise ValueError(result)
    d = settings.fleet_state_path()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = d / f".{DAYEND_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"day": str(day), "result": result}))
    os.replace(tmp, d / DAYEND_FILE)


def _status_class() -> Any:
    from kiosk.fleet.agent import TerminalStatus

    class KioskStatus(TerminalStatus):
        """TerminalStatus whose day-end comes from the file `kiosk reconcile` (a separate process) writes."""

        dayend_path: Path | None = None

        def day_end(self) -> dict[str, Any]:
            import json
            from datetime import date

            try:
                d = json.loads(self.dayend_path.read_text()) if self.dayend_path else None
                if d and d.get("result") in ("ok", "mismatch", "failed"):
                    return {"day": date.fromisoformat(d["day"]).isoformat(), "result": d["result"]}
            except (OSError, ValueError, KeyError, TypeError):
                pass
            return dict(self.dayend)

    return KioskStatus


def pack_for(settings: Settings) -> Settings:
    """The settings with `model_pack` pointing at the pack the fleet agent applied last (if any).
    A pack there that no longer loads is logged and the provisioned one is used."""
    if not settings.fleet_url:
        return settings
    cur = settings.fleet_state_path() / "model_pack" / "current"
    if not cur.is_dir() or not (cur / "manifest.json").is_file():
        return settings
    try:
        from models.loader import load_pack

        load_pack(cur, manifest=cur / "manifest.json", providers=settings.onnx_providers,
                  intra_op_threads=settings.onnx_threads)
    except KioskError as e:
        log.error("the fleet's model pack %s does not load (%s): starting on the provisioned pack", cur.resolve(), e)
        return settings
    return replace(settings, model_pack=cur)


def manifest_sha256(settings: Settings) -> str:
    """sha256 of the manifest of the pack in use (what the heartbeat reports before any fleet pack)."""
    from models.loader import MANIFEST_PATH

    for p in (Path(settings.model_pack) / "manifest.json", Path(MANIFEST_PATH)):
        if p.is_file():
            return hashlib.sha256(p.read_bytes()).hexdigest()
    return "none"


class Applier:
    """`apply(kind, path)` for the agent: raise a KioskError to refuse (the agent switches back)."""

    def __init__(self, settings: Settings, terminal: Any, vision: Any, bridge: Any) -> None:
        self.settings, self.terminal, self.vision, self.bridge = settings, terminal, vision, bridge
        self._lock = threading.Lock()
        self._next: Any = None  # a loaded pipeline waiting for an idle moment
        self.pack_in_use: str = str(settings.model_pack)
        prev = getattr(terminal, "on_idle", None)

        def on_idle() -> None:
            if prev is not None:
                prev()
            self.swap_when_idle()

        terminal.on_idle = on_idle

    def __call__(self, kind: str, path: Path) -> None:
        """Any failure is a KioskError, so that the agent switches back and reports it."""
        try:
            if kind == "model_pack":
                self.model_pack(path)
            elif kind == "mcu_firmware":
                self.firmware(path)
            else:
                raise ConfigError(f"no way to apply {kind}", code="unknown_kind")
        except KioskError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{kind} not applied: {type(e).__name__}: {e}"[:300], code="apply_failed") from None

    # ------------------------------------------------------------ model pack
    def model_pack(self, path: Path) -> None:
        from kiosk.vision.pipeline import FacePipeline
        from models.loader import load_pack

        root = Path(self.settings.model_pack) if str(path) in ("", ".") else Path(path)  # rollback to provisioned
        manifest = root / "manifest.json" if (root / "manifest.json").is_file() else None
        try:
            pack = load_pack(root, manifest=manifest, providers=self.settings.onnx_providers,
                             intra_op_threads=self.settings.onnx_threads)
            for key, e in pack.manifest["models"].items():  # every model must load, as provisioning checks
                if e.get("engine") != "cv2.FaceDetectorYN" and not (e.get("dev_only") and not pack.path(key).exists()):
                    pack.session(key)
            pipe = FacePipeline(pack, detector=self.settings.face_detector)
        except KioskError:
            raise
        except Exception as e:  # noqa: BLE001 - OpenCV and onnxruntime raise their own types
            raise ConfigError(f"model pack {root.name} does not load: {type(e).__name__}: {e}"[:300],
                              code="pack_unloadable") from None
        with self._lock:
            self._next = (pipe, str(root))
        self.swap_when_idle()

    def swap_when_idle(self) -> bool:
        """Put the waiting pipeline in place if no session runs or waits; True when it did."""
        with self._lock:
            if self._next is None or not self.terminal.idle():
                return False
            pipe, root = self._next
            self._next = None
            self.vision.pipe = pipe  # PipelineVision reads it once per capture
            self.pack_in_use = root
        log.info("model pack %s in use from the next session", root)
        return True

    @property
    def pending(self) -> bool:
        return self._next is not None

    # ------------------------------------------------------------ MCU firmware
    def firmware(self, path: Path) -> None:
        if not self.settings.fleet_firmware_install:
            raise ConfigError("the fleet agent may not install MCU firmware here (KIOSK_FLEET_FIRMWARE_INSTALL=1 "
                              "allows it); a technician installs it through the bridge", code="firmware_install_off")
        if str(path) in ("", "."):
            raise ConfigError("no previous fleet firmware image to go back to: the MCU keeps what it runs",
                              code="firmware_no_previous")
        blob = Path(path).read_bytes()
        name = f"fleet-{hashlib.sha256(blob).hexdigest()[:16]}.kfw"
        fw_dir = self.settings.bridge_firmware_path()
        dest = fw_dir / name
        tmp = fw_dir / f".{name}.{secrets.token_hex(4)}.part"  # a hidden name: the bridge never reads it
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"cannot write into the bridge's firmware directory {fw_dir}: {e.strerror or e}",
                              code="firmware_dir_unwritable") from None
        self.bridge.firmware_update(name)
        end = time.monotonic() + FIRMWARE_WAIT_S
        while time.monotonic() < end:
            job = self.bridge.firmware_job()
            if job.get("state") == "done":
                log.info("MCU firmware %s flashed from %s", job.get("version"), name)
                return
            if job.get("state") == "failed":
                raise DeviceError(f"the MCU refused firmware {job.get('version')}: {job.get('error')}",
                                  code="firmware_refused")
            time.sleep(0.2)
        raise DeviceError("the MCU firmware update did not finish in time", code="firmware_timeout")


@dataclass
class FleetLink:
    """The running agent: `stop()` ends the thread and unhooks the session counts."""

    agent: Any
    applier: Applier
    counts: Any
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    marker: Path | None = None  # <fleet state>/running while the app runs

    def start(self) -> FleetLink:
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop_event,), name="fleet-agent",
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        from kiosk import metrics

        self.stop_event.set()
        if self.marker is not None:
            self.marker.unlink(missing_ok=True)  # a clean stop: the next start counts no crash
        try:
            metrics.session_listeners.remove(self.counts.session)
        except ValueError:
            pass
        if self.thread is not None:
            self.thread.join(timeout=15)
        try:
            self.agent.http.close()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def start_fleet(settings: Settings, keystore: Any, terminal: Any, vision: Any, bridge: Any, *,
                app_version: str | None = None, camera_ok: Any = None, run: bool = True) -> FleetLink | None:
    """The fleet agent for this terminal, or None when no fleet URL is configured.
    `run=False` builds it without the thread (tests drive `link.agent.beat()`)."""
    if not settings.fleet_url:
        return None
    from kiosk.fleet import artifacts as art
    from kiosk.fleet.agent import Counts, FleetAgent, signer_from_keystore

    if not settings.fleet_operator_pub:
        raise ConfigError("KIOSK_FLEET_URL is set but not KIOSK_FLEET_OPERATOR_PUB (the operator's artifact "
                          "public key): updates could not be checked", field="fleet_operator_pub")
    trust = art.load_public(Path(settings.fleet_operator_pub))
    fw_trust = None
    if settings.fleet_firmware_trust:
        from firmware_bridge.firmware import load_public_key

        fw_trust = load_public_key(Path(settings.fleet_firmware_trust).read_bytes())
    if app_version is None:
        try:
            from importlib.metadata import version

            app_version = version("kiosk")
        except Exception:  # noqa: BLE001 - not installed as a distribution
            app_version = "0.1.0"
    counts = Counts()
    status = _status_class()(terminal, bridge, app_version=app_version, counts=counts, camera_ok=camera_ok)
    status.dayend_path = settings.fleet_state_path() / DAYEND_FILE
    applier = Applier(settings, terminal, vision, bridge)
    agent = FleetAgent(settings.fleet_url, signer_from_keystore(keystore), status, trust_key=trust,
                       state_dir=settings.fleet_state_path(), counts=counts,
                       base_model_pack=manifest_sha256(settings), apply=applier, firmware_trust=fw_trust)
    marker = settings.fleet_state_path() / "running"
    if marker.exists():  # the last run ended without stop(): killed, crashed, watchdog restart, power cut
        counts.add("crashes")
    marker.write_text(str(os.getpid()))
    link = FleetLink(agent, applier, counts, marker=marker)
    return link.start() if run else link
