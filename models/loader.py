"""Load the face model pack: every file is checked against its sha256 first.

The manifest (models/manifest.json, in the repository) says which file does what,
its digest, input size and the calibrated thresholds. The pack directory itself
(the weights) is configuration (`Settings.model_pack`) and never committed. Bytes
are read once, hashed, and the same bytes are handed to the runtime, so a file
swapped between the check and the load cannot slip through.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiosk.errors import ConfigError, IntegrityError

MANIFEST_PATH = Path(__file__).resolve().parent / "manifest.json"
REQUIRED_KEYS = ("file", "task", "sha256", "input_size")


def load_manifest(path: Path | None = None) -> dict[str, Any]:
    path = Path(path or MANIFEST_PATH)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"model manifest not found: {path}", code="manifest_missing", field="manifest") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"model manifest unreadable: {path}: {e}", code="manifest_invalid", field="manifest") from None
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ConfigError("manifest has no 'models' table", code="manifest_invalid", field="models")
    for key, entry in models.items():
        missing = [k for k in REQUIRED_KEYS if k not in entry]
        if missing:
            raise ConfigError(f"manifest entry {key!r} lacks {', '.join(missing)}", code="manifest_invalid",
                              field=f"models.{key}")
    if not isinstance(data.get("thresholds"), dict):
        raise ConfigError("manifest has no 'thresholds' table", code="manifest_invalid", field="thresholds")
    _check_cohort(data["thresholds"])
    return data


COHORT_KEYS = ("match_norm_threshold", "match_norm_margin", "cohort_top_k", "cohort_min_size")


def _check_cohort(t: dict[str, Any]) -> None:
    """Normalised matching needs all four values, or none (raw decisions only)."""
    present = [k for k in COHORT_KEYS if k in t]
    if not present:
        return
    if len(present) != len(COHORT_KEYS):
        missing = [k for k in COHORT_KEYS if k not in t]
        raise ConfigError(f"manifest thresholds lack {', '.join(missing)}", code="manifest_invalid",
                          field=f"thresholds.{missing[0]}")
    try:
        k, size = int(t["cohort_top_k"]), int(t["cohort_min_size"])
        float(t["match_norm_threshold"]), float(t["match_norm_margin"])
    except (TypeError, ValueError):
        raise ConfigError("cohort thresholds must be numbers", code="manifest_invalid",
                          field="thresholds.cohort_top_k") from None
    if k < 2 or size < k or float(t["match_norm_margin"]) < 0:
        raise ConfigError("cohort_top_k must be >= 2, cohort_min_size >= cohort_top_k, margin >= 0",
                          code="manifest_invalid", field="thresholds.cohort_min_size")


def parse_providers(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    providers = [p.strip() for p in items if p.strip()]
    if not providers:
        raise ConfigError("no onnxruntime provider configured", code="providers_invalid", field="onnx_providers")
    return providers


def check_providers(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Refuse to start when onnxruntime lacks a provider the configuration asks for."""
    import onnxruntime as ort

    providers = parse_providers(spec)
    available = set(ort.get_available_providers())
    missing = [p for p in providers if p not in available]
    if missing:
        raise ConfigError(
            f"onnxruntime has no {', '.join(missing)} (available: {', '.join(sorted(available))})",
            code="provider_unavailable", field="onnx_providers")
    return providers


@dataclass
class ModelPack:
    """A verified model pack: digests checked, sessions built on demand and cached."""

    root: Path
    manifest: dict[str, Any]
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    intra_op_threads: int = 1
    _bytes: dict[str, bytes] = field(default_factory=dict, repr=False)
    _sessions: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def thresholds(self) -> dict[str, Any]:
        return self.manifest["thresholds"]

    def entry(self, key: str) -> dict[str, Any]:
        try:
            return self.manifest["models"][key]
        except KeyError:
            raise ConfigError(f"model pack has no {key!r} model", code="model_unknown", field=key) from None

    def path(self, key: str) -> Path:
        return self.root / self.entry(key)["file"]

    def read(self, key: str) -> bytes:
        """The file's bytes, after checking them against the manifest digest."""
        if key not in self._bytes:
            entry = self.entry(key)
            path = self.root / entry["file"]
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise ConfigError(f"model file missing: {path}", code="model_missing", field=entry["file"]) from None
            except OSError as e:
                raise ConfigError(f"model file unreadable: {path}: {e}", code="model_unreadable",
                                  field=entry["file"]) from None
            digest = hashlib.sha256(data).hexdigest()
            if digest != entry["sha256"].lower():
                raise IntegrityError(f"model file {path} has sha256 {digest}, manifest says {entry['sha256']}",
                                     code="model_altered", field=entry["file"])
            self._bytes[key] = data
        return self._bytes[key]

    def verify_all(self) -> list[str]:
        """Check every file in the manifest; return the verified relative paths. A `dev_only` file
        (non-commercial weights, e.g. SCRFD) may be absent from a production pack; present, it is checked."""
        return [self.entry(k)["file"] for k in self.manifest["models"]
                if not (self.entry(k).get("dev_only") and not self.path(k).exists()) and self.read(k) is not None]

    def session(self, key: str) -> Any:
        """An onnxruntime session for the model, single-threaded unless configured otherwise."""
        if key not in self._sessions:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = self.intra_op_threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.log_severity_level = 3
            try:
                sess = ort.InferenceSession(self.read(key), so, providers=self.providers)
            except Exception as e:  # onnxruntime raises its own exception types
                raise ConfigError(f"onnxruntime cannot load {self.entry(key)['file']}: {e}", code="model_unloadable",
                                  field=self.entry(key)["file"]) from None
            got = sess.get_providers()
            if got[: len(self.providers)] != self.providers[: len(got)] or self.providers[0] not in got:
                raise ConfigError(f"onnxruntime runs {self.entry(key)['file']} on {got}, asked for {self.providers}",
                                  code="provider_unavailable", field="onnx_providers")
            self._sessions[key] = sess
        return self._sessions[key]

    def drop_bytes(self) -> None:
        """Free the raw bytes once every session is built (they are re-read and re-checked if needed)."""
        self._bytes.clear()


def load_pack(root: Path | str | None = None, *, providers: str | list[str] | None = None,
              intra_op_threads: int | None = None, manifest: Path | None = None,
              verify: bool = True) -> ModelPack:
    """Open the pack named by configuration, checking providers and (by default) every digest."""
    from kiosk.config import load as load_settings

    settings = load_settings()
    root = Path(root) if root is not None else Path(settings.model_pack)
    if not root.is_dir():
        raise ConfigError(f"model pack directory not found: {root}", code="model_pack_missing", field="model_pack")
    prov = check_providers(providers if providers is not None else settings.onnx_providers)
    threads = intra_op_threads if intra_op_threads is not None else int(getattr(settings, "onnx_threads", 1))
    if threads < 1:
        raise ConfigError("intra-op threads must be at least 1", code="threads_invalid", field="onnx_threads")
    pack = ModelPack(root=root, manifest=load_manifest(manifest), providers=prov, intra_op_threads=threads)
    if verify:
        pack.verify_all()
    return pack
