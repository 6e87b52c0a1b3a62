"""Configuration in one place, with defaults that work for the demo.

Every value can be overridden by an environment variable `KIOSK_<NAME>` (upper
case). Paths default to places inside the checkout so the demo needs nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"KIOSK_{name.upper()}", default)


@dataclass(frozen=True)
class Settings:
    # where the terminal keeps its state (databases, key store, audit log)
    data_dir: Path = field(default_factory=lambda: Path(_env("data_dir", str(ROOT / "var"))))
    # the model pack a technician installed; the demo and tests use ../shared/models
    model_pack: Path = field(default_factory=lambda: Path(_env("model_pack", str(SHARED / "models"))))
    # face images the simulated camera plays in the demo
    demo_faces: Path = field(default_factory=lambda: Path(_env("demo_faces", str(SHARED / "data" / "faces"))))
    # database URL: sqlite:///path or postgresql://...
    database_url: str = field(default_factory=lambda: _env("database_url", ""))
    # onnxruntime providers, comma separated, checked at start-up
    onnx_providers: str = field(default_factory=lambda: _env("onnx_providers", "CPUExecutionProvider"))
    # onnxruntime intra-op threads per model session (the kiosk CPU has 2 cores)
    onnx_threads: int = field(default_factory=lambda: int(_env("onnx_threads", "1")))
    # face detector: "yunet" (cv2.FaceDetectorYN, default) or "scrfd" (insightface, dev only)
    face_detector: str = field(default_factory=lambda: _env("face_detector", "yunet"))
    # serial URL of the terminal's microcontroller (pyserial URL)
    serial_url: str = field(default_factory=lambda: _env("serial_url", ""))
    timezone: str = field(default_factory=lambda: _env("timezone", "Asia/Shanghai"))
    # anti-replay: a signed message further than this from the receiver's clock is refused as stale
    replay_window_s: float = field(default_factory=lambda: float(_env("replay_window_s", "300")))

    # firmware bridge (firmware_bridge.service): its per-boot API secret, written 0600 by the bridge and read by
    # the kiosk app (systemd: /run/kiosk-bridge/token), and the only directory firmware images are installed
    # from (systemd: /var/lib/kiosk-bridge/firmware); empty: <data_dir>/bridge/token and <data_dir>/bridge/firmware
    bridge_token_file: str = field(default_factory=lambda: _env("bridge_token_file", ""))
    bridge_firmware_dir: str = field(default_factory=lambda: _env("bridge_firmware_dir", ""))
    # the patient's screen: its per-start secret, written 0600 by the kiosk app and read by the kiosk browser's
    # launcher (kiosk.app.screen.launch; systemd: /run/kiosk-app/screen-token); empty: <data_dir>/screen/token
    screen_token_file: str = field(default_factory=lambda: _env("screen_token_file", ""))
    # the largest .kfw the bridge reads (header + signature + image); a bigger file is refused unread
    bridge_firmware_max_bytes: int = field(default_factory=lambda: int(_env("bridge_firmware_max_bytes", str(8 << 20))))

    # the operator's fleet service (docs/fleet.md): empty = no fleet agent, nothing reported. With a URL, `kiosk serve`
    # sends a signed heartbeat every minute and applies staged updates when idle. The operator's artifact public key
    # (PEM, `kiosk fleet keygen`'s operator.pub; required with a URL) is what every fleet artifact must be signed with.
    fleet_url: str = field(default_factory=lambda: _env("fleet_url", ""))
    fleet_operator_pub: str = field(default_factory=lambda: _env("fleet_operator_pub", ""))
    # the agent's state (staged versions, current/previous, pending reports); empty: <data_dir>/fleet
    fleet_state_dir: str = field(default_factory=lambda: _env("fleet_state_dir", ""))
    # "1": the agent may write a verified MCU image into the bridge's firmware dir and ask the bridge to flash it
    # (the app's user must be able to write there); otherwise an MCU rollout is reported failed, nothing flashed
    fleet_firmware_install: bool = field(default_factory=lambda: _env("fleet_firmware_install", "0") == "1")
    # the MCU's firmware signing key (PEM); when set the agent checks a .kfw's own signature before handing it on
    fleet_firmware_trust: str = field(default_factory=lambda: _env("fleet_firmware_trust", ""))

    # SQLite durability: FULL (every commit fsynced: survives power loss) or NORMAL (benchmarks)
    sqlite_synchronous: str = field(default_factory=lambda: _env("sqlite_synchronous", "FULL"))

    # POS orders refused at the door (kiosk.app.bill_check), before the patient starts a session:
    # an admission deposit above this (yuan) -- never above the credit line's 20,000-yuan ceiling,
    # since the deposit is a hold on that line --, a bill above this total (yuan), more lines than this
    pos_max_deposit: str = field(default_factory=lambda: _env("pos_max_deposit", "20000.00"))
    pos_max_bill: str = field(default_factory=lambda: _env("pos_max_bill", "1000000.00"))
    pos_max_lines: int = field(default_factory=lambda: int(_env("pos_max_lines", "500")))
    # the insurance centre (simulator): a settlement may be returned in part (re-settled on its own authority,
    # no fresh face) for this many days after it was made
    centre_return_window_days: int = field(default_factory=lambda: int(_env("centre_return_window_days", "30")))
    # the centre's catalogue (1312) cached in the data dir is fetched again when older than this
    catalogue_max_age_s: float = field(default_factory=lambda: float(_env("catalogue_max_age_s", "86400")))

    def db_url(self, name: str = "kiosk") -> str:
        return self.database_url or f"sqlite:///{self.data_dir / (name + '.db')}"

    def bridge_token_path(self) -> Path:
        return Path(self.bridge_token_file) if self.bridge_token_file else self.data_dir / "bridge" / "token"

    def screen_token_path(self) -> Path:
        return Path(self.screen_token_file) if self.screen_token_file else self.data_dir / "screen" / "token"

    def bridge_firmware_path(self) -> Path:
        return Path(self.bridge_firmware_dir) if self.bridge_firmware_dir else self.data_dir / "bridge" / "firmware"

    def fleet_state_path(self) -> Path:
        return Path(self.fleet_state_dir) if self.fleet_state_dir else self.data_dir / "fleet"

    def as_dict(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}


def load() -> Settings:
    return Settings()
