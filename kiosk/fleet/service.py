"""The fleet service's logic: registry, signed heartbeats, alerts, staged rollouts.

HTTP lives in `app.py`; this module takes bytes and headers and returns values,
so the load test, the CLI and the tests drive the same code. Who may act:
a terminal acts only as itself (the signed device id must be the body's
`terminal_id`, its key the registered one, its status active); everything else
is the operator's (admin token, checked in `app.py`).
"""
from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from kiosk.clock import Clock, SystemClock
from kiosk.errors import ConflictError, IntegrityError, InputError
from kiosk.fleet import artifacts as art
from kiosk.fleet.models import AlertEvent, Heartbeat, Publish, Registration
from kiosk.fleet.notify import LogNotifier, Notifier
from kiosk.fleet.rules import Rule, Rules, load_rules
from kiosk.fleet.schema import MIGRATIONS
from kiosk.security.replay import MemoryNonceStore, ReplayGuard, RequestVerifier
from kiosk.security.sm import Sm2PublicKey
from kiosk.storage import Database, Outbox, Transaction

log = logging.getLogger("kiosk.fleet")

BEAT_S = 60
ALERT_TOPIC = "fleet.alert"


class Refused(Exception):
    """A signed request that is not accepted. The HTTP answer is the same 401 whatever the
    reason (unknown, revoked, bad signature, replay, stale), so a caller learns nothing about
    which terminals exist; the reason is kept for the log and the metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Key:
    alg: str
    key_id: str
    public_hex: str
    obj: Any


@dataclass(frozen=True)
class _Beat:
    hb: Heartbeat
    key: _Key
    raw: bytes
    t0: float


def now_ms(clock: Clock) -> int:
    return int(clock.now().timestamp() * 1000)


def cohort_bucket(terminal_id: str) -> float:
    """Where a terminal falls in 0..100 (deterministic): stage p% takes buckets below p."""
    return int.from_bytes(hashlib.sha256(terminal_id.encode()).digest()[:8], "big") / 2**64 * 100


def _parse_key(alg: str, hexkey: str) -> Any:
    raw = bytes.fromhex(hexkey)
    if alg == "Ed25519":
        return Ed25519PublicKey.from_public_bytes(raw)
    return Sm2PublicKey.from_bytes(raw)


class FleetService:
    def __init__(self, db: Database, *, clock: Clock | None = None, rules: Rules | None = None,
                 notifier: Notifier | None = None, window_s: float | None = None) -> None:
        self.db = db
        self.clock = clock or SystemClock()
        self.rules = rules or load_rules()
        self.notifier = notifier or LogNotifier()
        db.migrate(MIGRATIONS)
        self.guard = ReplayGuard(MemoryNonceStore(), window_s=window_s, clock=self.clock)
        self.verifier = RequestVerifier(self._key_for, self.guard)
        self._keys: dict[tuple[str, str], _Key] = {}
        self._keys_lock = threading.Lock()
        self._live: tuple[float, list[dict[str, Any]]] = (0.0, [])  # cached live rollouts (1 s)
        self.outbox = Outbox("fleet.")
        self.on_heartbeat: Any = None  # metrics hook: fn(result, seconds)
        # the operator's public key: when set, a publish whose signature does not verify is refused
        self.operator_key: Ed25519PublicKey | None = None

    # ------------------------------------------------------------ registry (operator)
    def register(self, reg: Registration) -> dict[str, Any]:
        try:
            _parse_key(reg.alg, reg.public_key)
        except ValueError:
            raise InputError("public_key is not a valid key for alg", field="public_key") from None
        now = now_ms(self.clock)

        def work(tx: Transaction) -> None:
            tx.execute(
                "INSERT INTO fleet_terminals (terminal_id, institution, district, alg, key_id, public_key, status,"
                " registered_ms) VALUES (?, ?, ?, ?, ?, ?, 'active', ?) ON CONFLICT (terminal_id) DO UPDATE SET"
                " institution = excluded.institution, district = excluded.district, alg = excluded.alg,"
                " key_id = excluded.key_id, status = 'active',"
                " last_seq = CASE WHEN fleet_terminals.public_key = excluded.public_key"
                "   THEN fleet_terminals.last_seq ELSE 0 END,"
                " public_key = excluded.public_key",
                (reg.terminal_id, reg.institution, reg.district, reg.alg, reg.key_id, reg.public_key, now))

        self.db.run(work)
        self._forget(reg.terminal_id)
        return {"terminal_id": reg.terminal_id, "status": "active"}

    def revoke(self, terminal_id: str) -> bool:
        n = self.db.run(lambda tx: tx.execute(
            "UPDATE fleet_terminals SET status = 'revoked' WHERE terminal_id = ?", (terminal_id,)))
        self._forget(terminal_id)
        return n == 1

    def _forget(self, terminal_id: str) -> None:
        with self._keys_lock:
            for k in [k for k in self._keys if k[0] == terminal_id]:
                del self._keys[k]

    def warm_keys(self) -> int:
        """Parse every active terminal's key once at start, so no beat waits on a key read."""
        rows = self.db.read(lambda tx: tx.fetch_all(
            "SELECT terminal_id, alg, key_id, public_key FROM fleet_terminals WHERE status = 'active'"))
        keys = {}
        for tid, alg, kid, pub in rows[:100_000]:
            try:
                keys[(tid, kid)] = _Key(alg, kid, pub, _parse_key(alg, pub))
            except ValueError:
                continue
        with self._keys_lock:
            self._keys.update(keys)
        return len(keys)

    def _key_for(self, device_id: str, key_id: str) -> Any:
        k = self._load_key(device_id, key_id)
        return None if k is None else k.obj

    def _load_key(self, device_id: str, key_id: str) -> _Key | None:
        with self._keys_lock:
            k = self._keys.get((device_id, key_id))
        if k is not None:
            return k
        row = self.db.read(lambda tx: tx.fetch_one(
            "SELECT alg, key_id, public_key FROM fleet_terminals WHERE terminal_id = ? AND status = 'active'",
            (device_id,)))
        if row is None or row[1] != key_id:
            return None
        try:
            k = _Key(row[0], row[1], row[2], _parse_key(row[0], row[2]))
        except ValueError:
            return None
        with self._keys_lock:
            if len(self._keys) > 100_000:
                self._keys.clear()
            self._keys[(device_id, key_id)] = k
        return k

    # ------------------------------------------------------------ signed requests (terminal)
    def authenticate(self, method: str, path: str, body: bytes, headers: Any) -> tuple[str, _Key]:
        try:
            v = self.verifier.verify(method, path, body, headers)
        except IntegrityError as e:
            raise Refused(e.code) from None
        key = self._load_key(v.device_id, v.key_id)
        if key is None:  # revoked between the two reads
            raise Refused("unknown_key")
        return v.device_id, key

    def heartbeat(self, body: bytes, headers: Any, path: str = "/v1/heartbeat") -> dict[str, Any]:
        """Verify, store and answer one beat. Raises Refused (-> 401) or InputError (-> 422)."""
        r = self.store_batch([self.prepare(body, headers, path)])[0]
        if isinstance(r, Refused):
            raise r
        return r

    def prepare(self, body: bytes, headers: Any, path: str = "/v1/heartbeat") -> _Beat:
        """The checks that need no write: signature, window, nonce, body. Raises Refused or InputError."""
        t0 = time.perf_counter()
        try:
            device, key = self.authenticate("POST", path, body, headers)
            try:
                hb = Heartbeat.model_validate_json(body)
            except ValidationError as e:
                first = e.errors()[0]
                raise InputError(str(first.get("msg", "invalid")),
                                 field=".".join(str(p) for p in first.get("loc", ())) or "body") from None
            if hb.terminal_id != device:
                raise Refused("terminal_mismatch")
        except (Refused, InputError) as e:
            if self.on_heartbeat is not None:
                self.on_heartbeat("refused" if isinstance(e, Refused) else "invalid", time.perf_counter() - t0)
            raise
        return _Beat(hb, key, body, t0)

    def store_batch(self, beats: list[_Beat]) -> list[dict[str, Any] | Refused]:
        """Store prepared beats in ONE transaction (group commit: the HTTP path hands over the
        beats that arrived together). Each beat still passes its own conditional UPDATE (active,
        registered key, seq above the stored one); one refused beat does not affect the others."""
        now = now_ms(self.clock)
        live = self._live_rollouts()

        def work(tx: Transaction) -> list[dict[str, Any] | Refused]:
            out: list[dict[str, Any] | Refused] = []
            stmts = []
            for b in beats:
                hb, key = b.hb, b.key
                p, v, j = hb.peripherals, hb.versions, hb.journal
                stmts.append((
                    "UPDATE fleet_terminals SET last_seen_ms = ?, last_seq = ?, app_version = ?, model_pack = ?,"
                    " mcu_firmware = ?, paper = ?, cover = ?, camera = ?, bridge = ?, unresolved = ?,"
                    " refunds_pending = ?, dayend_day = ?, dayend_result = ?"
                    " WHERE terminal_id = ? AND status = 'active' AND key_id = ? AND public_key = ? AND last_seq < ?"
                    " RETURNING terminal_id",
                    (now, hb.seq, v.app, v.model_pack, v.mcu_firmware, p.paper, p.cover, p.camera, p.bridge,
                     j.unresolved, j.refunds_pending, hb.day_end.day.isoformat() if hb.day_end.day else None,
                     hb.day_end.result, hb.terminal_id, key.key_id, key.public_hex, hb.seq)))
            # one round trip for the whole batch on PostgreSQL (pipeline); in order on SQLite. Two beats
            # of one terminal in a batch: the second UPDATE sees the first's seq, as if sent alone.
            got = tx.fetch_each(stmts)
            rows = []
            for b, row in zip(beats, got):
                hb, c = b.hb, b.hb.counts
                if row is None:
                    out.append(Refused("replayed_or_revoked"))
                    continue
                rows.append((hb.terminal_id, now, hb.seq, sum(o.n for o in c.sessions),
                             sum(o.n for o in c.sessions if o.outcome == "failed"), c.liveness_rejects,
                             c.match_rejects, c.activation_lockouts, c.crashes,
                             b.raw.decode("utf-8")))  # validated: stored as signed
                for u in hb.updates:
                    self._record_update(tx, hb.terminal_id, u.rollout_id, u.result, u.reason, now)
                out.append({"accepted": True, "next_beat_s": BEAT_S,
                            "instructions": self._instructions(tx, hb, live) if live else []})
            insert = ("INSERT INTO fleet_heartbeats (terminal_id, received_ms, seq, sessions, failures,"
                      " liveness_rejects, match_rejects, lockouts, crashes, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            if self.db.dialect == "sqlite":
                tx.executemany(insert, rows)
            else:
                for r in rows:  # sent with COMMIT, in the same round trip
                    tx.execute_at_commit(insert, r)
            return out

        try:
            results = self.db.run(work)
        except Exception:
            if self.on_heartbeat is not None:
                for b in beats:
                    self.on_heartbeat("error", time.perf_counter() - b.t0)
            raise
        if self.on_heartbeat is not None:
            for b, r in zip(beats, results):
                self.on_heartbeat("refused" if isinstance(r, Refused) else "accepted", time.perf_counter() - b.t0)
        return results

    # ------------------------------------------------------------ rollouts
    def publish(self, pub: Publish, blob: bytes) -> dict[str, Any]:
        """Store an operator-signed artifact. The signature is checked here too (with the
        operator key the service was given, when it has one) so a typo is caught at the door;
        the terminal checks it again with its own copy of the key before using the bytes."""
        if len(blob) == 0:
            raise InputError("artifact is empty", field="blob_b64")
        if hashlib.sha256(blob).hexdigest() != pub.sha256:
            raise InputError("blob does not match sha256", field="sha256")
        if self.operator_key is not None:
            try:
                art.verify_blob(self.operator_key, pub.kind, pub.version, pub.sha256, len(blob), pub.signature, blob)
            except IntegrityError as e:
                raise InputError(e.message, field=e.field) from None
        now = now_ms(self.clock)

        def work(tx: Transaction) -> bool:
            row = tx.fetch_one("SELECT kind, version, signature FROM fleet_artifacts WHERE sha256 = ?", (pub.sha256,))
            if row is not None:
                if (row[0], row[1], row[2]) != (pub.kind, pub.version, pub.signature):
                    raise ConflictError("this sha256 was published with another kind/version/signature",
                                        code="artifact_conflict", field="sha256")
                return False
            tx.execute("INSERT INTO fleet_artifacts (sha256, kind, version, size, signature, blob, published_ms)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (pub.sha256, pub.kind, pub.version, len(blob), pub.signature, blob, now))
            return True

        created = self.db.run(work)
        return {"sha256": pub.sha256, "kind": pub.kind, "version": pub.version, "size": len(blob), "created": created}

    def start_rollout(self, artifact_sha256: str, kind: str) -> dict[str, Any]:
        now = now_ms(self.clock)

        def work(tx: Transaction) -> int:
            row = tx.fetch_one("SELECT kind FROM fleet_artifacts WHERE sha256 = ?", (artifact_sha256,))
            if row is None or row[0] != kind:
                raise InputError("no published artifact of that kind with this sha256", code="not_found",
                                 field="artifact_sha256")
            live = tx.fetch_one("SELECT id, status FROM fleet_rollouts WHERE kind = ? AND status IN ('active', 'halted')",
                                (kind,))
            if live is not None:
                raise ConflictError(f"rollout {live[0]} of {kind} is {live[1]}; finish or close it first",
                                    code="rollout_live", field="kind")
            rid = tx.scalar("INSERT INTO fleet_rollouts (kind, artifact_sha256, stage, status, created_ms,"
                            " stage_started_ms) VALUES (?, ?, 0, 'active', ?, ?) RETURNING id",
                            (kind, artifact_sha256, now, now))
            return int(rid)

        rid = self.db.run(work)
        self._live = (0.0, [])
        return self.rollout(rid)

    def advance(self, rollout_id: int) -> dict[str, Any]:
        """Next stage (1% -> 10% -> all), only from a healthy active rollout."""
        self.check_rollouts()
        now = now_ms(self.clock)
        last = len(self.rules.rollout.stages) - 1

        def work(tx: Transaction) -> None:
            row = tx.fetch_one("SELECT stage, status FROM fleet_rollouts WHERE id = ?" + tx.for_update, (rollout_id,))
            if row is None:
                raise InputError("no such rollout", code="not_found", field="rollout_id")
            if row[1] != "active":
                raise ConflictError(f"rollout {rollout_id} is {row[1]}", code="rollout_not_active", field="rollout_id")
            if row[0] >= last:
                raise ConflictError("rollout is already at 100%", code="rollout_complete", field="rollout_id")
            tx.execute("UPDATE fleet_rollouts SET stage = ?, stage_started_ms = ? WHERE id = ?",
                       (row[0] + 1, now, rollout_id))

        self.db.run(work)
        self._live = (0.0, [])
        return self.rollout(rollout_id)

    def halt(self, rollout_id: int, reason: str) -> bool:
        """Stop offering the artifact and tell every terminal that applied it to roll back."""
        n = self.db.run(lambda tx: tx.execute(
            "UPDATE fleet_rollouts SET status = 'halted', reason = ? WHERE id = ? AND status = 'active'",
            (reason[:200], rollout_id)))
        self._live = (0.0, [])
        if n:
            log.warning("rollout %s halted: %s", rollout_id, reason)
        return n == 1

    def close(self, rollout_id: int) -> bool:
        n = self.db.run(lambda tx: tx.execute(
            "UPDATE fleet_rollouts SET status = 'closed' WHERE id = ? AND status IN ('active', 'halted')",
            (rollout_id,)))
        self._live = (0.0, [])
        return n == 1

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        def read(tx: Transaction) -> dict[str, Any]:
            r = tx.fetch_dicts("SELECT r.id, r.kind, r.artifact_sha256, r.stage, r.status, r.reason, r.created_ms,"
                               " r.stage_started_ms, a.version FROM fleet_rollouts r JOIN fleet_artifacts a"
                               " ON a.sha256 = r.artifact_sha256 WHERE r.id = ?", (rollout_id,))
            if not r:
                raise InputError("no such rollout", code="not_found", field="rollout_id")
            d = r[0]
            d["percent"] = self.rules.rollout.stages[d["stage"]]
            d["terminals"] = {s: n for s, n in tx.fetch_all(
                "SELECT state, COUNT(*) FROM fleet_rollout_terminals WHERE rollout_id = ? GROUP BY state",
                (rollout_id,))}
            return d

        return self.db.read(read)

    def rollouts(self) -> list[dict[str, Any]]:
        ids = self.db.read(lambda tx: [r[0] for r in tx.fetch_all("SELECT id FROM fleet_rollouts ORDER BY id DESC")])
        return [self.rollout(i) for i in ids[:50]]

    def _live_rollouts(self) -> list[dict[str, Any]]:
        at, live = self._live
        if time.monotonic() - at < 1.0:
            return live
        live = self.db.read(lambda tx: tx.fetch_dicts(
            "SELECT r.id, r.kind, r.artifact_sha256, r.stage, r.status, a.version, a.size, a.signature"
            " FROM fleet_rollouts r JOIN fleet_artifacts a ON a.sha256 = r.artifact_sha256"
            " WHERE r.status IN ('active', 'halted')"))
        for r in live:
            if r["status"] == "active":
                r["floor"] = self.db.read(lambda tx, st=r["stage"]: self._cohort_floor(tx, st))
        self._live = (time.monotonic(), live)
        return live

    def in_cohort(self, terminal_id: str, stage: int) -> bool:
        return cohort_bucket(terminal_id) < self.rules.rollout.stages[stage]

    def _cohort_floor(self, tx: Transaction, stage: int) -> str | None:
        """At least one terminal per stage: when no active terminal falls under the percentage,
        the one with the lowest bucket is the cohort (a 1% stage of 60 terminals is still a test)."""
        ids = [r[0] for r in tx.fetch_all("SELECT terminal_id FROM fleet_terminals WHERE status = 'active'")]
        pct = self.rules.rollout.stages[stage]
        if not ids or any(cohort_bucket(i) < pct for i in ids):
            return None
        return min(ids, key=cohort_bucket)

    def _instructions(self, tx: Transaction, hb: Heartbeat, live: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        states = {r[0]: r[1] for r in tx.fetch_all(
            "SELECT rollout_id, state FROM fleet_rollout_terminals WHERE terminal_id = ?", (hb.terminal_id,))}
        installed = {"model_pack": hb.versions.model_pack}
        for r in live:
            st = states.get(r["id"])
            if r["status"] == "halted":
                if st in ("applied", "offered"):
                    out.append({"action": "rollback", "kind": r["kind"], "rollout_id": r["id"], "artifact": None})
                continue
            if st in ("applied", "failed", "rolled_back"):
                continue
            if installed.get(r["kind"]) == r["artifact_sha256"]:
                continue
            if not (self.in_cohort(hb.terminal_id, r["stage"]) or r.get("floor") == hb.terminal_id):
                continue
            if st is None:
                tx.execute("INSERT INTO fleet_rollout_terminals (rollout_id, terminal_id, state, updated_ms)"
                           " VALUES (?, ?, 'offered', ?) ON CONFLICT (rollout_id, terminal_id) DO NOTHING",
                           (r["id"], hb.terminal_id, now_ms(self.clock)))
            out.append({"action": "install", "kind": r["kind"], "rollout_id": r["id"], "artifact": {
                "rollout_id": r["id"], "kind": r["kind"], "version": r["version"], "sha256": r["artifact_sha256"],
                "size": r["size"], "signature": r["signature"], "url": f"/v1/artifacts/{r['artifact_sha256']}"}})
        return out

    def _record_update(self, tx: Transaction, terminal_id: str, rollout_id: int, result: str, reason: str,
                       now: int) -> None:
        tx.execute("INSERT INTO fleet_rollout_terminals (rollout_id, terminal_id, state, reason, updated_ms)"
                   " VALUES (?, ?, ?, ?, ?) ON CONFLICT (rollout_id, terminal_id) DO UPDATE SET"
                   " state = excluded.state, reason = excluded.reason, updated_ms = excluded.updated_ms",
                   (rollout_id, terminal_id, result, reason, now))

    def artifact(self, sha256: str, body: bytes, headers: Any, path: str) -> tuple[bytes, dict[str, Any]]:
        """The bytes of an artifact, for an active terminal that has been offered it."""
        device, _ = self.authenticate("GET", path, body, headers)
        row = self.db.read(lambda tx: tx.fetch_one(
            "SELECT a.blob, a.kind, a.version FROM fleet_artifacts a JOIN fleet_rollouts r"
            " ON r.artifact_sha256 = a.sha256 JOIN fleet_rollout_terminals t ON t.rollout_id = r.id"
            " WHERE a.sha256 = ? AND t.terminal_id = ? AND r.status = 'active'", (sha256, device)))
        if row is None:
            raise Refused("not_offered")
        return bytes(row[0]), {"kind": row[1], "version": row[2]}

    def check_rollouts(self) -> list[dict[str, Any]]:
        """Compare each active rollout's cohort with the rest; halt beyond the bounds.
        Also closes a halted rollout once every cohort terminal rolled back."""
        b = self.rules.rollout
        now = now_ms(self.clock)
        decisions = []
        live = self.db.read(lambda tx: tx.fetch_dicts(
            "SELECT id, status, stage_started_ms FROM fleet_rollouts WHERE status IN ('active', 'halted')"))
        for r in live:
            if r["status"] == "halted":
                left = self.db.read(lambda tx: tx.scalar(
                    "SELECT COUNT(*) FROM fleet_rollout_terminals WHERE rollout_id = ? AND state IN ('applied', 'offered')",
                    (r["id"],)))
                if left == 0:
                    self.db.run(lambda tx: tx.execute(
                        "UPDATE fleet_rollouts SET status = 'rolled_back' WHERE id = ? AND status = 'halted'", (r["id"],)))
                    self._live = (0.0, [])
                continue
            since = max(r["stage_started_ms"], now - int(b.window_minutes * 60000))
            m = self.compare(r["id"], since)
            why = self._beyond(m)
            decisions.append({"rollout_id": r["id"], "metrics": m, "halt": why})
            if why:
                self.halt(r["id"], why)
                self._alert_fleet(f"rollout_{r['id']}", "rollout_halted", "critical",
                                  f"rollout {r['id']} halted and rolled back: {why}")
        return decisions

    def compare(self, rollout_id: int, since_ms: int) -> dict[str, dict[str, float]]:
        rows = self.db.read(lambda tx: tx.fetch_all(
            "SELECT CASE WHEN t.state = 'applied' AND h.received_ms > t.updated_ms THEN 'cohort'"
            " WHEN t.state IS NULL OR t.state NOT IN ('applied') THEN 'rest' ELSE 'skip' END AS grp,"
            " COUNT(DISTINCT h.terminal_id), SUM(h.sessions), SUM(h.failures), SUM(h.liveness_rejects),"
            " SUM(h.crashes) FROM fleet_heartbeats h LEFT JOIN fleet_rollout_terminals t"
            " ON t.terminal_id = h.terminal_id AND t.rollout_id = ? WHERE h.received_ms >= ? GROUP BY 1",
            (rollout_id, since_ms)))
        out = {g: {"terminals": 0, "sessions": 0, "failure_rate": 0.0, "liveness_reject_rate": 0.0,
                   "crashes_per_terminal": 0.0} for g in ("cohort", "rest")}
        for grp, terms, sess, fails, lrej, crashes in rows:
            if grp not in out:
                continue
            sess, terms = int(sess or 0), int(terms or 0)
            out[grp] = {"terminals": terms, "sessions": sess,
                        "failure_rate": (int(fails or 0) / sess) if sess else 0.0,
                        "liveness_reject_rate": (int(lrej or 0) / sess) if sess else 0.0,
                        "crashes_per_terminal": (int(crashes or 0) / terms) if terms else 0.0}
        return out

    def _beyond(self, m: dict[str, dict[str, float]]) -> str:
        b, c, r = self.rules.rollout, m["cohort"], m["rest"]
        if c["terminals"] and c["crashes_per_terminal"] - r["crashes_per_terminal"] > b.crashes_per_terminal_delta:
            return (f"crashes per terminal {c['crashes_per_terminal']:.2f} vs {r['crashes_per_terminal']:.2f}"
                    f" (bound +{b.crashes_per_terminal_delta:g})")
        if c["sessions"] < b.min_cohort_sessions:
            return ""
        for name, ratio, delta in (("liveness_reject_rate", b.liveness_reject_ratio, b.liveness_reject_delta),
                                   ("failure_rate", b.session_failure_ratio, b.session_failure_delta)):
            if c[name] > r[name] * ratio and c[name] - r[name] > delta:
                return (f"{name} {c[name]:.1%} in the cohort vs {r[name]:.1%} in the rest"
                        f" (bound x{ratio:g} and +{delta:.0%})")
        return ""

    # ------------------------------------------------------------ alerts
    def evaluate(self) -> dict[str, int]:
        """One pass of the job: every rule raised/cleared, rollouts checked, history trimmed,
        queued events sent. Returns counts of what changed."""
        now = now_ms(self.clock)
        raised = cleared = 0
        for rule in self.rules.rules:
            hits = self._violations(rule, now)
            r, c = self._reconcile(rule, hits, now)
            raised, cleared = raised + r, cleared + c
        self.check_rollouts()
        self.db.run(lambda tx: tx.execute("DELETE FROM fleet_heartbeats WHERE received_ms < ?",
                                          (now - int(self.rules.history_days * 86_400_000),)))
        sent, failed = self.deliver()
        return {"raised": raised, "cleared": cleared, "sent": sent, "send_failed": failed}

    def deliver(self) -> tuple[int, int]:
        return self.outbox.drain(self.db, lambda m: self.notifier.send(AlertEvent(**m.payload)), limit=10_000)

    def _violations(self, rule: Rule, now: int) -> dict[str, Any]:
        """terminal_id -> value shown in the summary, for every active terminal breaking `rule`."""
        p = rule.params
        if rule.kind == "offline":
            cutoff = now - int(float(p["minutes"]) * 60000)
            rows = self.db.read(lambda tx: tx.fetch_all(
                "SELECT terminal_id, COALESCE(last_seen_ms, registered_ms) FROM fleet_terminals"
                " WHERE status = 'active' AND COALESCE(last_seen_ms, registered_ms) < ?", (cutoff,)))
            return {t: math.floor((now - seen) / 60000) for t, seen in rows}
        if rule.kind == "peripheral":
            col = p["field"]  # checked against PERIPHERAL_FIELDS when the rules were loaded
            vals = [str(v) for v in p["values"]]
            rows = self.db.read(lambda tx: tx.fetch_all(
                f"SELECT terminal_id, {col} FROM fleet_terminals WHERE status = 'active'"
                f" AND {col} IN ({','.join('?' * len(vals))})", tuple(vals)))
            return dict(rows)
        if rule.kind == "backlog":
            rows = self.db.read(lambda tx: tx.fetch_all(
                "SELECT terminal_id, unresolved + refunds_pending FROM fleet_terminals WHERE status = 'active'"
                " AND unresolved + refunds_pending >= ?", (int(p["threshold"]),)))
            return dict(rows)
        if rule.kind == "dayend":
            vals = [str(v) for v in p["values"]]
            rows = self.db.read(lambda tx: tx.fetch_all(
                "SELECT terminal_id, dayend_result FROM fleet_terminals WHERE status = 'active'"
                f" AND dayend_result IN ({','.join('?' * len(vals))})", tuple(vals)))
            return dict(rows)
        if rule.kind == "reject_rate":
            since = now - int(float(p["window_minutes"]) * 60000)
            rows = self.db.read(lambda tx: tx.fetch_all(
                "SELECT h.terminal_id, SUM(h.sessions), SUM(h.liveness_rejects) FROM fleet_heartbeats h"
                " JOIN fleet_terminals t ON t.terminal_id = h.terminal_id AND t.status = 'active'"
                " WHERE h.received_ms >= ? GROUP BY h.terminal_id", (since,)))
            tot_s = sum(int(s or 0) for _, s, _ in rows)
            tot_r = sum(int(r or 0) for _, _, r in rows)
            hits = {}
            for t, s, rj in rows:
                s, rj = int(s or 0), int(rj or 0)
                if s < int(p["min_sessions"]):
                    continue
                rest_s, rest_r = tot_s - s, tot_r - rj
                fleet = rest_r / rest_s if rest_s else 0.0
                rate = rj / s
                if rate > float(p["factor"]) * fleet and rate - fleet > float(p["margin"]):
                    hits[t] = f"{rate:.0%} vs fleet {fleet:.0%}"
            return hits
        return {}

    def _reconcile(self, rule: Rule, hits: dict[str, Any], now: int) -> tuple[int, int]:
        def work(tx: Transaction) -> tuple[int, int]:
            open_ = {t: i for i, t in tx.fetch_all(
                "SELECT id, terminal_id FROM fleet_alerts WHERE rule = ? AND cleared_ms IS NULL", (rule.name,))}
            places = {}
            if set(hits) ^ set(open_):
                places = {t: (i, d) for t, i, d in tx.fetch_all(
                    "SELECT terminal_id, institution, district FROM fleet_terminals")}
            raised = cleared = 0
            for t in sorted(set(hits) - set(open_)):
                summary = rule.text(value=hits[t])
                aid = tx.scalar("INSERT INTO fleet_alerts (terminal_id, rule, severity, summary, raised_ms)"
                                " VALUES (?, ?, ?, ?, ?) RETURNING id", (t, rule.name, rule.severity, summary, now))
                self._queue(tx, "raised", int(aid), rule.name, rule.severity, t, places.get(t, ("", "")), summary, now)
                raised += 1
            for t in sorted(set(open_) - set(hits)):
                aid = open_[t]
                row = tx.fetch_one("SELECT summary FROM fleet_alerts WHERE id = ?", (aid,))
                tx.execute("UPDATE fleet_alerts SET cleared_ms = ? WHERE id = ? AND cleared_ms IS NULL", (now, aid))
                self._queue(tx, "cleared", aid, rule.name, rule.severity, t, places.get(t, ("", "")),
                            row[0] if row else "", now)
                cleared += 1
            return raised, cleared

        return self.db.run(work)

    def _alert_fleet(self, key: str, rule: str, severity: str, summary: str) -> None:
        """A fleet-wide alert (no terminal), e.g. a halted rollout; cleared by the operator's close."""
        now = now_ms(self.clock)

        def work(tx: Transaction) -> None:
            if tx.fetch_one("SELECT id FROM fleet_alerts WHERE terminal_id = ? AND rule = ? AND cleared_ms IS NULL",
                            (key, rule)):
                return
            aid = tx.scalar("INSERT INTO fleet_alerts (terminal_id, rule, severity, summary, raised_ms)"
                            " VALUES (?, ?, ?, ?, ?) RETURNING id", (key, rule, severity, summary, now))
            self._queue(tx, "raised", int(aid), rule, severity, key, ("", ""), summary, now)

        self.db.run(work)

    def _queue(self, tx: Transaction, event: str, aid: int, rule: str, severity: str, terminal: str,
               place: tuple[str, str], summary: str, now: int) -> None:
        from datetime import datetime, timezone

        ev = AlertEvent(event=event, alert_id=aid, rule=rule, severity=severity, terminal_id=terminal,
                        institution=place[0], district=place[1], summary=summary,
                        at=datetime.fromtimestamp(now / 1000, timezone.utc).isoformat())
        self.outbox.put(tx, ALERT_TOPIC, ev.model_dump(mode="json"), dedupe_key=f"fleet.alert.{aid}.{event}")

    # ------------------------------------------------------------ views
    def terminals(self, *, institution: str = "", district: str = "", state: str = "", q: str = "",
                  offline_minutes: float | None = None) -> list[dict[str, Any]]:
        now = now_ms(self.clock)
        off = offline_minutes
        if off is None:
            off = next((float(r.params["minutes"]) for r in self.rules.rules if r.kind == "offline"), 5.0)
        where, params = ["1 = 1"], []
        if institution:
            where.append("t.institution = ?")
            params.append(institution)
        if district:
            where.append("t.district = ?")
            params.append(district)
        if q:
            where.append("t.terminal_id LIKE ?")
            params.append(f"%{q}%")

        def read(tx: Transaction) -> list[dict[str, Any]]:
            rows = tx.fetch_dicts(
                "SELECT t.terminal_id, t.institution, t.district, t.status, t.last_seen_ms, t.app_version,"
                " t.model_pack, t.mcu_firmware, t.paper, t.cover, t.camera, t.bridge, t.unresolved,"
                " t.refunds_pending, t.dayend_result FROM fleet_terminals t WHERE " + " AND ".join(where) +
                " ORDER BY t.institution, t.district, t.terminal_id", tuple(params))
            alerts: dict[str, list[dict[str, Any]]] = {}
            for t, rule, sev, summ, at in tx.fetch_all(
                    "SELECT terminal_id, rule, severity, summary, raised_ms FROM fleet_alerts WHERE cleared_ms IS NULL"
                    " ORDER BY raised_ms"):
                alerts.setdefault(t, []).append({"rule": rule, "severity": sev, "summary": summ, "raised_ms": at})
            return [dict(r, alerts=alerts.get(r["terminal_id"], [])) for r in rows]

        out = []
        for r in self.db.read(read):
            if r["status"] == "revoked":
                r["state"] = "revoked"
            elif r["last_seen_ms"] is None or now - r["last_seen_ms"] > off * 60000:
                r["state"] = "offline"
            elif r["alerts"]:
                r["state"] = "alerting"
            else:
                r["state"] = "ok"
            if not state or r["state"] == state:
                out.append(r)
        return out

    def open_alerts(self) -> list[dict[str, Any]]:
        return self.db.read(lambda tx: tx.fetch_dicts(
            "SELECT id, terminal_id, rule, severity, summary, raised_ms FROM fleet_alerts WHERE cleared_ms IS NULL"
            " ORDER BY raised_ms"))

    def summary(self) -> dict[str, Any]:
        ts = self.terminals()
        by: dict[str, int] = {}
        for t in ts:
            by[t["state"]] = by.get(t["state"], 0) + 1
        alerts: dict[str, int] = {}
        for a in self.open_alerts():
            alerts[a["rule"]] = alerts.get(a["rule"], 0) + 1
        return {"terminals": by, "open_alerts": alerts}


__all__ = ["FleetService", "Refused", "cohort_bucket"]
