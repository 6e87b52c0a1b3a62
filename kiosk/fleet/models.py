"""What crosses the fleet service's boundary: pydantic models that forbid extra fields.

Nothing personal is reported: there is no field for a person, an ID number, a
name, a psn_no, a face, a template or a score (tests/fleet/test_models.py checks
the field names of every model here). Reasons and outcomes are machine codes of
letters and underscores only, so a number cannot ride in one.
"""
from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CODE = r"^[a-z_]{1,40}$"  # a reason/outcome code: no digits, so no ID number can hide in it
SHA256 = r"^[0-9a-f]{64}$"
VERSION = r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,39}$"
TERMINAL_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Versions(Strict):
    app: str = Field(pattern=VERSION, description="kiosk software version")
    model_pack: str = Field(pattern=r"^([0-9a-f]{64}|none)$", description="sha256 of the installed model pack")
    mcu_firmware: str = Field(pattern=r"^(\d{1,3}\.\d{1,3}\.\d{1,3}|none)$", description="MCU firmware x.y.z")


class Peripherals(Strict):
    paper: Literal["ok", "low", "out", "unknown"] = "unknown"
    cover: Literal["closed", "open", "unknown"] = "unknown"
    camera: Literal["ok", "no_frames", "unknown"] = "unknown"
    bridge: Literal["connected", "connecting", "disconnected", "unknown"] = "unknown"


class OutcomeCount(Strict):
    outcome: Literal["paid", "failed", "cancelled", "retry"]
    reason: str = Field("", pattern=r"^[a-z_]{0,40}$")
    n: int = Field(ge=0, le=100_000)


class Counts(Strict):
    """Counts since the previous beat (the terminal resets them once a beat was accepted)."""

    sessions: list[OutcomeCount] = Field(default_factory=list, max_length=64)
    liveness_rejects: int = Field(0, ge=0, le=100_000)
    match_rejects: int = Field(0, ge=0, le=100_000)
    activation_lockouts: int = Field(0, ge=0, le=100_000)
    crashes: int = Field(0, ge=0, le=1_000, description="process restarts after a crash")


class JournalState(Strict):
    unresolved: int = Field(0, ge=0, le=1_000_000, description="orders the journal shows unfinished")
    refunds_pending: int = Field(0, ge=0, le=1_000_000)


class DayEnd(Strict):
    day: date | None = None
    result: Literal["ok", "mismatch", "failed", "not_run"] = "not_run"


class UpdateReport(Strict):
    rollout_id: int = Field(ge=1)
    kind: Literal["model_pack", "mcu_firmware"]
    sha256: str = Field(pattern=SHA256)
    result: Literal["applied", "failed", "rolled_back"]
    reason: str = Field("", pattern=r"^[a-z_]{0,40}$")


class Heartbeat(Strict):
    """One signed beat (every minute). `seq` rises by one per accepted beat: a replay, even
    to another worker after the nonce window, is refused by the stored sequence."""

    terminal_id: str = Field(pattern=TERMINAL_ID)
    seq: int = Field(ge=1, le=2**62)
    uptime_s: int = Field(0, ge=0)
    versions: Versions
    peripherals: Peripherals = Peripherals()
    counts: Counts = Counts()
    journal: JournalState = JournalState()
    day_end: DayEnd = DayEnd()
    updates: list[UpdateReport] = Field(default_factory=list, max_length=8)


class ArtifactRef(Strict):
    rollout_id: int
    kind: Literal["model_pack", "mcu_firmware"]
    version: str
    sha256: str
    size: int
    signature: str = Field(description="base64 Ed25519 signature by the operator over the artifact statement")
    url: str = Field(description="path to fetch the bytes from (signed GET)")


class Instruction(Strict):
    action: Literal["install", "rollback"]
    kind: Literal["model_pack", "mcu_firmware"]
    rollout_id: int
    artifact: ArtifactRef | None = None


class HeartbeatAnswer(Strict):
    accepted: bool
    next_beat_s: int
    instructions: list[Instruction] = Field(default_factory=list)


class Registration(Strict):
    terminal_id: str = Field(pattern=TERMINAL_ID)
    institution: str = Field(min_length=1, max_length=30, pattern=r"^[A-Za-z0-9_-]+$",
                             description="fixmedins code of the pharmacy/clinic")
    district: str = Field(min_length=1, max_length=40, description="area code or district name")
    key_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    alg: Literal["Ed25519", "SM2"] = "Ed25519"
    public_key: str = Field(min_length=64, max_length=130, pattern=r"^[0-9a-f]+$",
                            description="hex: Ed25519 raw 32 bytes, or SM2 04||x||y")


class Publish(Strict):
    kind: Literal["model_pack", "mcu_firmware"]
    version: str = Field(pattern=VERSION)
    sha256: str = Field(pattern=SHA256)
    signature: str = Field(min_length=80, max_length=100, description="base64 Ed25519 over the statement")
    blob_b64: str = Field(min_length=4, max_length=400_000_000)


class RolloutCreate(Strict):
    artifact_sha256: str = Field(pattern=SHA256)
    kind: Literal["model_pack", "mcu_firmware"]


class AlertEvent(Strict):
    """What the notifier sends: ids and codes only."""

    event: Literal["raised", "cleared"]
    alert_id: int
    rule: str
    severity: str
    terminal_id: str
    institution: str
    district: str
    summary: str
    at: str
