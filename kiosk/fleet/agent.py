"""The terminal's side of the fleet: signed heartbeats, and updates applied only when idle.

`FleetAgent.beat()` sends one heartbeat signed with the device key (the same
`RequestSigner` headers the services check) and acts on the answer:
- `install`: when the terminal is idle (never mid-payment), fetch the artifact
  (signed GET), check sha256 + the operator's Ed25519 signature with the trust
  key provisioned on the terminal, unpack/check it (a model pack file by file
  against its manifest; an MCU image as a signed `.kfw`), switch to it and keep
  the previous version;
- `rollback`: switch back to the previous version.
Each result is reported in the next beat (kept on disk until a beat carrying it
was accepted). Counts since the last beat are reset only when a beat was
accepted, so a lost beat's counts ride on the next one.

`Installed` is the on-disk layout per kind: `<dir>/<kind>/versions/<sha256>`,
`current` (a symlink switched atomically) and `state.json` (current, previous).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections import Counter as _Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kiosk.errors import DeviceError, IntegrityError, KioskError, RemoteError
from kiosk.fleet import artifacts as art
from kiosk.fleet.models import Heartbeat, HeartbeatAnswer, UpdateReport
from kiosk.security.replay import RequestSigner

log = logging.getLogger("kiosk.fleet.agent")


class Status(Protocol):
    """What the terminal knows about itself right now (no person, no score)."""

    def versions(self) -> dict[str, str]: ...        # app, mcu_firmware (model_pack comes from Installed)
    def peripherals(self) -> dict[str, str]: ...     # paper, cover, camera, bridge
    def journal(self) -> dict[str, int]: ...         # unresolved, refunds_pending
    def day_end(self) -> dict[str, Any]: ...         # day, result
    def idle(self) -> bool: ...                      # no session running or queued


@dataclass
class StaticStatus:
    """A status whose fields are set by hand: the simulator and the tests."""

    app: str = "0.1.0"
    mcu_firmware: str = "1.0.0"
    periph: dict[str, str] = field(default_factory=lambda: {"paper": "ok", "cover": "closed", "camera": "ok",
                                                            "bridge": "connected"})
    unresolved: int = 0
    refunds_pending: int = 0
    dayend: dict[str, Any] = field(default_factory=lambda: {"day": None, "result": "not_run"})
    busy: bool = False

    def versions(self) -> dict[str, str]:
        return {"app": self.app, "mcu_firmware": self.mcu_firmware}

    def peripherals(self) -> dict[str, str]:
        return dict(self.periph)

    def journal(self) -> dict[str, int]:
        return {"unresolved": self.unresolved, "refunds_pending": self.refunds_pending}

    def day_end(self) -> dict[str, Any]:
        return dict(self.dayend)

    def idle(self) -> bool:
        return not self.busy


class Counts:
    """Counts since the last accepted beat. `take()` gives a snapshot; `settle(snapshot)`
    subtracts it once the beat was accepted (events counted meanwhile stay)."""

    FIELDS = ("liveness_rejects", "match_rejects", "activation_lockouts", "crashes")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: _Counter[tuple[str, str]] = _Counter()
        self._other: _Counter[str] = _Counter()

    def session(self, outcome: str, reason: str = "", n: int = 1) -> None:
        if n < 0:
            raise ValueError("a count cannot be negative")
        if outcome not in ("paid", "failed", "cancelled", "retry"):
            outcome = "failed"
        with self._lock:
            self._sessions[(outcome, reason or "")] += n
            if reason == "spoof_suspected":
                self._other["liveness_rejects"] += n
            elif reason in ("not_matched", "id_mismatch"):
                self._other["match_rejects"] += n
            elif reason == "id_locked":
                self._other["activation_lockouts"] += n

    def add(self, name: str, n: int = 1) -> None:
        if name not in self.FIELDS:
            raise ValueError(name)
        with self._lock:
            self._other[name] += n

    def take(self) -> tuple[_Counter[tuple[str, str]], _Counter[str]]:
        with self._lock:
            return _Counter(self._sessions), _Counter(self._other)

    def settle(self, snap: tuple[_Counter[tuple[str, str]], _Counter[str]]) -> None:
        with self._lock:
            self._sessions.subtract(snap[0])
            self._other.subtract(snap[1])
            self._sessions = _Counter({k: v for k, v in self._sessions.items() if v > 0})
            self._other = _Counter({k: v for k, v in self._other.items() if v > 0})

    @staticmethod
    def to_body(snap: tuple[_Counter[tuple[str, str]], _Counter[str]]) -> dict[str, Any]:
        sessions = [{"outcome": o, "reason": r, "n": n} for (o, r), n in sorted(snap[0].items()) if n > 0][:64]
        return {"sessions": sessions, **{f: snap[1].get(f, 0) for f in Counts.FIELDS}}


class Installed:
    """Versions of one kind on disk with `current` and `previous` (for rollback)."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root = Path(root) / kind
        self.kind = kind
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        self._state_path = self.root / "state.json"

    def state(self) -> dict[str, str]:
        try:
            return json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return {"current": "", "previous": ""}

    def _write(self, st: dict[str, str]) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(st))
        os.replace(tmp, self._state_path)

    @property
    def current(self) -> str:
        return self.state().get("current", "")

    def path(self, sha: str) -> Path:
        return self.root / "versions" / (sha + (".kfw" if self.kind == "mcu_firmware" else ""))

    def has(self, sha: str) -> bool:
        return self.path(sha).exists()

    def stage(self, sha: str, blob: bytes) -> Path:
        """Check and store a version (not yet current). Model packs are unpacked and checked
        file by file; MCU images must parse as a .kfw whose digest matches."""
        dest = self.path(sha)
        if dest.exists():
            return dest
        tmp = dest.with_name(dest.name + ".staging")
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        if self.kind == "model_pack":
            art.unpack_pack(blob, tmp)
        else:
            from firmware_bridge.firmware import SignedImage

            SignedImage.from_bytes(blob)  # digest and size of the image itself
            tmp.write_bytes(blob)
        os.replace(tmp, dest)
        return dest

    def switch(self, sha: str) -> None:
        """Make `sha` current; the old current becomes previous. The `current` link is replaced
        atomically, so a reader sees the old pack or the new one, never a mix."""
        st = self.state()
        if st.get("current") == sha:
            return
        link = self.root / "current"
        tmp = self.root / ".current.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(self.path(sha), tmp)
        os.replace(tmp, link)
        self._write({"current": sha, "previous": st.get("current", "")})

    def rollback(self) -> str:
        """Back to the previous version; returns the sha rolled away from ("" if nothing to do)."""
        st = self.state()
        cur, prev = st.get("current", ""), st.get("previous", "")
        if not cur:
            return ""
        link = self.root / "current"
        if prev and self.has(prev):
            tmp = self.root / ".current.tmp"
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(self.path(prev), tmp)
            os.replace(tmp, link)
        elif link.is_symlink():
            link.unlink()  # back to what provisioning installed
        self._write({"current": prev, "previous": ""})
        return cur


Apply = Callable[[str, Path], None]  # (kind, path) -> raises to refuse; e.g. reload the pack, flash the MCU


class FleetAgent:
    def __init__(self, url: str, signer: RequestSigner, status: Status, *, trust_key: Ed25519PublicKey,
                 state_dir: Path | None = None, counts: Counts | None = None, base_model_pack: str = "none",
                 apply: Apply | None = None, firmware_trust: Ed25519PublicKey | None = None,
                 http: httpx.Client | None = None, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.signer = signer
        self.terminal_id = signer.device_id
        self.status = status
        self.trust_key = trust_key
        self.firmware_trust = firmware_trust
        self.counts = counts or Counts()
        self.base_model_pack = base_model_pack
        self.apply = apply
        self.http = http or httpx.Client(timeout=timeout_s)
        self.state_dir = Path(state_dir) if state_dir else None
        self._mem: dict[str, Any] = {"seq": 0, "reports": []}
        self.installed: dict[str, Installed] = {}
        if self.state_dir:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            for kind in art.KINDS:
                self.installed[kind] = Installed(self.state_dir, kind)
        self.next_beat_s = 60
        self.last_answer: dict[str, Any] | None = None
        self.deferred = 0  # installs put off because the terminal was busy
        self._lock = threading.Lock()
        self._seq: int | None = None
        self._seq_limit = 0

    # ------------------------------------------------------------ persistent agent state
    def _load(self) -> dict[str, Any]:
        if not self.state_dir:
            return self._mem
        try:
            return json.loads((self.state_dir / "agent.json").read_text())
        except (OSError, ValueError):
            return {"seq": 0, "reports": []}

    def _save(self, st: dict[str, Any]) -> None:
        if not self.state_dir:
            self._mem = st
            return
        p = self.state_dir / "agent.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(st))
        os.replace(tmp, p)

    def _report(self, rollout_id: int, kind: str, sha: str, result: str, reason: str = "") -> None:
        st = self._load()
        st["reports"] = [r for r in st.get("reports", []) if r["rollout_id"] != rollout_id][-7:] + [
            {"rollout_id": rollout_id, "kind": kind, "sha256": sha, "result": result, "reason": reason}]
        self._save(st)

    # ------------------------------------------------------------ heartbeat
    SEQ_BLOCK = 1000

    def _next_seq(self) -> int:
        """Sequence numbers are reserved on disk a block at a time (one write per 1,000 beats);
        after a restart the agent starts above the last reservation, so a seq is never reused."""
        if self._seq is None or self._seq >= self._seq_limit:
            st = self._load()
            base = max(int(st.get("seq", 0)), self._seq or 0)
            st["seq"] = base + self.SEQ_BLOCK
            self._save(st)
            self._seq, self._seq_limit = base, base + self.SEQ_BLOCK
        self._seq += 1
        return self._seq

    def build(self) -> tuple[bytes, Any, int]:
        seq = self._next_seq()
        st = self._load()
        snap = self.counts.take()
        v = self.status.versions()
        pack = self.installed["model_pack"].current if "model_pack" in self.installed else ""
        hb = Heartbeat.model_validate({
            "terminal_id": self.terminal_id, "seq": seq, "uptime_s": int(time.monotonic()),
            "versions": {"app": v["app"], "model_pack": pack or self.base_model_pack, "mcu_firmware": v["mcu_firmware"]},
            "peripherals": self.status.peripherals(), "counts": Counts.to_body(snap),
            "journal": self.status.journal(), "day_end": self.status.day_end(),
            "updates": [UpdateReport(**r) for r in st.get("reports", [])],
        })
        return hb.model_dump_json().encode(), snap, len(st.get("reports", []))

    def beat(self, report_now: bool = True) -> dict[str, Any] | None:
        """One heartbeat; returns the service's answer (None when refused or unreachable).
        After an install or rollback a second beat carries the result right away."""
        with self._lock:
            body, snap, nrep = self.build()
            path = "/v1/heartbeat"
            headers = {"Content-Type": "application/json", **self.signer.headers("POST", path, body)}
            try:
                r = self.http.post(self.url + path, content=body, headers=headers)
            except httpx.HTTPError as e:
                log.warning("heartbeat not delivered: %s", type(e).__name__)
                return None
            if r.status_code != 200:
                log.warning("heartbeat refused: %s", r.status_code)
                return None
            self.counts.settle(snap)
            if nrep:
                st = self._load()
                st["reports"] = st.get("reports", [])[nrep:]
                self._save(st)
            answer = HeartbeatAnswer.model_validate(r.json()).model_dump(mode="json")
            self.last_answer = answer
            self.next_beat_s = answer["next_beat_s"]
            done = [self.act(ins) for ins in answer["instructions"]]
        if any(d in ("applied", "failed", "rolled_back") for d in done) and report_now:
            # report at once: the service then compares only what happened after the switch
            return self.beat(report_now=False) or answer
        return answer

    def act(self, ins: dict[str, Any]) -> str:
        """Carry out one instruction; returns applied | failed | rolled_back | deferred | skipped."""
        kind, rid = ins["kind"], ins["rollout_id"]
        inst = self.installed.get(kind)
        if inst is None:
            return "skipped"
        if not self.status.idle():
            self.deferred += 1
            return "deferred"  # the service offers it again with the next beat
        if ins["action"] == "rollback":
            away = inst.rollback()
            if away and self.apply:
                try:
                    self.apply(kind, inst.path(inst.current) if inst.current else Path(""))
                except KioskError as e:
                    log.error("rollback of %s applied on disk but the reload failed: %s", kind, e)
            self._report(rid, kind, away or "0" * 64, "rolled_back")
            return "rolled_back"
        a = ins["artifact"]
        sha = a["sha256"]
        try:
            blob = self.fetch(a["url"])
            art.verify_blob(self.trust_key, kind, a["version"], sha, a["size"], a["signature"], blob)
            if kind == "mcu_firmware" and self.firmware_trust is not None:
                from firmware_bridge.firmware import SignedImage

                if not SignedImage.from_bytes(blob).verify(self.firmware_trust):
                    raise IntegrityError("firmware image signature does not verify", code="firmware_signature")
            inst.stage(sha, blob)
            if not self.status.idle():  # a session started while we fetched: try again next beat
                self.deferred += 1
                return "deferred"
            inst.switch(sha)
            if self.apply:
                try:
                    self.apply(kind, inst.path(sha))
                except KioskError:
                    inst.rollback()
                    raise
        except (KioskError, httpx.HTTPError) as e:
            code = getattr(e, "code", "fetch_failed")
            log.error("update %s %s not applied: %s", kind, sha[:12], e)
            self._report(rid, kind, sha, "failed", "".join(ch for ch in str(code) if ch.isalpha() or ch == "_")[:40])
            return "failed"
        self._report(rid, kind, sha, "applied")
        return "applied"

    def fetch(self, path: str) -> bytes:
        headers = self.signer.headers("GET", path, b"")
        r = self.http.get(self.url + path, headers=headers)
        if r.status_code != 200:
            raise RemoteError(f"artifact fetch answered {r.status_code}", code="fetch_refused")
        return r.content

    def run(self, stop: threading.Event) -> None:
        """Beat until `stop` is set (every `next_beat_s`, 60 s by default)."""
        while not stop.is_set():
            try:
                self.beat()
            except KioskError as e:
                log.error("heartbeat failed: %s", e)
            except Exception:  # noqa: BLE001 - the agent must outlive any one bad beat
                log.exception("heartbeat failed")
            stop.wait(self.next_beat_s)


def register_with_fleet(url: str, token: str, identity: dict[str, str], *, institution: str, district: str,
                        alg: str = "Ed25519", timeout_s: float = 10.0) -> dict[str, Any]:
    """Provisioning's step: register this terminal's public key (`KeyStore.public_identity()`)."""
    key = identity["ed25519"] if alg == "Ed25519" else identity["sm2"]
    body = {"terminal_id": identity["device_id"], "institution": institution, "district": district,
            "key_id": identity["kid"], "alg": alg, "public_key": key}
    try:
        r = httpx.post(url.rstrip("/") + "/admin/terminals", json=body, headers={"X-Admin-Token": token},
                       timeout=timeout_s)
    except httpx.HTTPError as e:
        raise DeviceError(f"fleet service {url} unreachable: {type(e).__name__}", code="fleet_unreachable") from None
    if r.status_code != 200:
        raise RemoteError(f"fleet registration refused ({r.status_code}): {r.text[:200]}", code="fleet_refused")
    return r.json()


def signer_from_keystore(keystore: Any, *, alg: str = "Ed25519") -> RequestSigner:
    """The device identity (kiosk.security.keystore) as the heartbeat signer."""
    key = keystore.signing_key() if alg == "Ed25519" else keystore.sm2_key()
    return RequestSigner(key, device_id=keystore.device_id, key_id=keystore.current_kid)


class TerminalStatus:
    """The Status of a real kiosk: the terminal (`kiosk.app.terminal.Terminal`: `idle()`, its store)
    and the bridge (`firmware_bridge.client.BridgeClient`), duck-typed so this module does not
    import kiosk.app. Sessions reach `counts` through `kiosk.metrics.session_listeners`."""

    def __init__(self, terminal: Any, bridge: Any, *, app_version: str = "0.1.0", counts: Counts | None = None,
                 camera_ok: Callable[[], bool] | None = None) -> None:
        from kiosk import metrics

        self.terminal, self.bridge, self.app_version = terminal, bridge, app_version
        self.camera_ok = camera_ok
        self.dayend: dict[str, Any] = {"day": None, "result": "not_run"}  # set by the day-end job
        if counts is not None:
            metrics.session_listeners.append(counts.session)

    def _bridge(self) -> dict[str, Any]:
        try:
            return self.bridge.status()
        except KioskError:
            return {"state": "disconnected"}

    def versions(self) -> dict[str, str]:
        fw = self._bridge().get("firmware") or "none"
        return {"app": self.app_version, "mcu_firmware": fw}

    def peripherals(self) -> dict[str, str]:
        st = self._bridge()
        p = st.get("peripherals") or {}
        state = st.get("state", "unknown")
        known = state == "connected"
        return {"paper": ("out" if p.get("paper_out") else "ok") if known else "unknown",
                "cover": ("open" if p.get("cover_open") else "closed") if known else "unknown",
                "camera": "unknown" if self.camera_ok is None else ("ok" if self.camera_ok() else "no_frames"),
                "bridge": state if state in ("connected", "connecting", "disconnected") else "unknown"}

    def journal(self) -> dict[str, int]:
        rows = self.terminal.store.open_orders()
        return {"unresolved": sum(1 for r in rows if r.status in ("running", "reversing")),
                "refunds_pending": len(self.terminal.store.open_refunds())}  # running (cut off) or pending

    def day_end(self) -> dict[str, Any]:
        return dict(self.dayend)

    def idle(self) -> bool:
        return bool(self.terminal.idle())
