"""Alert rules and rollout bounds from a TOML file an operator can read (`rules.toml`)."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiosk.errors import ConfigError

DEFAULT_RULES = Path(__file__).with_name("rules.toml")
KINDS = {
    "offline": {"minutes"},
    "peripheral": {"field", "values"},
    "reject_rate": {"window_minutes", "min_sessions", "factor", "margin"},
    "backlog": {"threshold"},
    "dayend": {"values"},
}
PERIPHERAL_FIELDS = {"paper", "cover", "camera", "bridge"}


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    severity: str
    summary: str
    params: dict[str, Any]

    def text(self, **values: Any) -> str:
        try:
            return self.summary.format(**self.params, **values)
        except (KeyError, IndexError, ValueError):
            return self.summary


@dataclass(frozen=True)
class RolloutBounds:
    stages: tuple[int, ...] = (1, 10, 100)
    window_minutes: float = 60
    min_cohort_sessions: int = 20
    liveness_reject_ratio: float = 2.0
    liveness_reject_delta: float = 0.10
    session_failure_ratio: float = 2.0
    session_failure_delta: float = 0.10
    crashes_per_terminal_delta: float = 1.0


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...]
    rollout: RolloutBounds = field(default_factory=RolloutBounds)
    evaluate_every_s: float = 30
    history_days: float = 14


def load_rules(path: Path | str | None = None) -> Rules:
    """Read and check the rules file (default: KIOSK_FLEET_RULES, else the shipped rules.toml).
    Any mistake is a ConfigError naming the rule and key."""
    path = Path(path or os.environ.get("KIOSK_FLEET_RULES") or DEFAULT_RULES)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"rules file {path}: {e}", code="rules_invalid", field=str(path)) from None
    rules, names = [], set()
    for i, r in enumerate(doc.get("rule", [])):
        where = f"rule[{i}]"
        try:
            name, kind = str(r["name"]), str(r["kind"])
            severity, summary = str(r.get("severity", "warning")), str(r.get("summary", name))
        except KeyError as e:
            raise ConfigError(f"{path}: lacks {e.args[0]}", code="rules_invalid", field=where) from None
        if kind not in KINDS:
            raise ConfigError(f"{path}: unknown kind {kind!r} (one of {', '.join(KINDS)})", code="rules_invalid",
                              field=f"{where}.kind")
        if name in names:
            raise ConfigError(f"{path}: rule name {name!r} used twice", code="rules_invalid", field=f"{where}.name")
        names.add(name)
        params = {k: v for k, v in r.items() if k not in ("name", "kind", "severity", "summary")}
        missing = KINDS[kind] - set(params)
        if missing:
            raise ConfigError(f"{path}: {name} lacks {', '.join(sorted(missing))}", code="rules_invalid", field=where)
        if kind == "peripheral" and params["field"] not in PERIPHERAL_FIELDS:
            raise ConfigError(f"{path}: {name}: field must be one of {sorted(PERIPHERAL_FIELDS)}",
                              code="rules_invalid", field=f"{where}.field")
        for k, v in params.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                raise ConfigError(f"{path}: {name}.{k} must not be negative", code="rules_invalid",
                                  field=f"{where}.{k}")
        rules.append(Rule(name, kind, severity, summary, params))
    ro = doc.get("rollout", {})
    try:
        bounds = RolloutBounds(**{k: (tuple(int(s) for s in v) if k == "stages" else v) for k, v in ro.items()})
    except TypeError as e:
        raise ConfigError(f"{path}: [rollout]: {e}", code="rules_invalid", field="rollout") from None
    st = bounds.stages
    if not st or list(st) != sorted(set(st)) or st[0] <= 0 or st[-1] != 100:
        raise ConfigError(f"{path}: rollout.stages must rise and end at 100", code="rules_invalid",
                          field="rollout.stages")
    return Rules(tuple(rules), bounds, float(doc.get("evaluate_every_s", 30)), float(doc.get("history_days", 14)))
