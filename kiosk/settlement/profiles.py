"""Policy profiles: the region values of the settlement rules, kept as data.

Ratios, deductibles and caps differ by region and change by decree, so they live
in `profiles/*.json` shipped with the package, never in code. Every file is
loaded and validated once at start; a bad file is a ConfigError naming the file
and the key, so a wrong deployment fails loudly before any bill is settled.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from kiosk.errors import ConfigError, InputError, KioskError
from kiosk.money import Fen, parse_decimal, yuan_to_fen

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
LEVELS = (1, 2, 3)
KNOWN_CONDITIONS = frozenset({"htn", "dm"})  # hypertension, diabetes mellitus

_KEYS_REQUIRED = {"name", "ratio_by_level", "deductible_by_level", "class_b_selfpay_prop"}
_KEYS_OPTIONAL = {"description", "annual_cap", "annual_cap_by_conditions", "conditions", "placeholders"}


@dataclass(frozen=True)
class Profile:
    """One named policy: pooling ratio, deductible and annual cap per level.

    `annual_cap_by_conditions` is set for chronic-care profiles, whose cap
    depends on how many of `conditions` the patient has (1 or 2); otherwise
    `annual_cap` applies and the profile accepts no conditions.
    """

    name: str
    ratio_by_level: Mapping[int, Decimal]
    deductible_by_level: Mapping[int, Fen]
    class_b_selfpay_prop: Decimal
    annual_cap: Fen | None = None
    conditions: frozenset[str] = frozenset()
    annual_cap_by_conditions: Mapping[int, Fen] | None = None
    description: str = ""

    @property
    def is_chronic(self) -> bool:
        return self.annual_cap_by_conditions is not None

    def ratio(self, level: int) -> Decimal:
        return self.ratio_by_level[level]

    def deductible(self, level: int) -> Fen:
        return self.deductible_by_level[level]

    def check_conditions(self, conditions: frozenset[str], field: str = "conditions") -> None:
        """Refuse conditions this profile does not know (InputError naming `field`)."""
        if not self.is_chronic:
            if conditions:
                raise InputError(f"profile {self.name!r} takes no chronic-care conditions", field=field)
            return
        if not conditions:
            raise InputError(
                f"profile {self.name!r} needs at least one of {sorted(self.conditions)}", field=field
            )
        unknown = conditions - self.conditions
        if unknown:
            raise InputError(
                f"unknown condition(s) {sorted(unknown)} for profile {self.name!r}; known: {sorted(self.conditions)}",
                field=field,
            )

    def cap(self, conditions: frozenset[str] = frozenset()) -> Fen:
        """The annual pooling cap for a patient with these conditions."""
        self.check_conditions(conditions)
        if self.annual_cap_by_conditions is not None:
            return self.annual_cap_by_conditions[len(conditions)]
        assert self.annual_cap is not None
        return self.annual_cap


def _per_level(raw: object, key: str, parse) -> dict[int, object]:
    if not isinstance(raw, dict) or set(raw) != {str(lv) for lv in LEVELS}:
        raise ConfigError(f"must be an object with keys {[str(lv) for lv in LEVELS]}", field=key)
    return {lv: parse(raw[str(lv)], f"{key}.{lv}") for lv in LEVELS}


def _ratio(value: object, field: str) -> Decimal:
    d = parse_decimal(value, field)
    if d > 1:
        raise ConfigError(f"must be between 0 and 1, got {value!r}", field=field)
    return d


def profile_from_dict(data: object) -> Profile:
    """Validate a decoded profile file (raises ConfigError naming the key)."""
    try:
        return _profile_from_dict(data)
    except ConfigError:
        raise
    except KioskError as e:  # a value parser's InputError -> it is configuration here
        raise ConfigError(e.message, field=e.field) from None


def _profile_from_dict(data: object) -> Profile:
    if not isinstance(data, dict):
        raise ConfigError("a profile must be a JSON object")
    missing = _KEYS_REQUIRED - set(data)
    if missing:
        raise ConfigError(f"missing key(s) {sorted(missing)}")
    unknown = set(data) - _KEYS_REQUIRED - _KEYS_OPTIONAL
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)}")
    name = data["name"]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("must be a non-empty string", field="name")
    ratios = _per_level(data["ratio_by_level"], "ratio_by_level", _ratio)
    deductibles = _per_level(data["deductible_by_level"], "deductible_by_level", yuan_to_fen)
    selfpay = _ratio(data["class_b_selfpay_prop"], "class_b_selfpay_prop")
    has_cap, has_by_cond = "annual_cap" in data, "annual_cap_by_conditions" in data
    if has_cap == has_by_cond:
        raise ConfigError("exactly one of annual_cap / annual_cap_by_conditions is required")
    annual_cap = yuan_to_fen(data["annual_cap"], "annual_cap") if has_cap else None
    conditions: frozenset[str] = frozenset()
    by_cond: Mapping[int, Fen] | None = None
    if has_by_cond:
        conds = data.get("conditions")
        if (
            not isinstance(conds, list)
            or not conds
            or len(set(conds)) != len(conds)
            or not set(conds) <= KNOWN_CONDITIONS
        ):
            raise ConfigError(f"must be a list of distinct conditions from {sorted(KNOWN_CONDITIONS)}", field="conditions")
        conditions = frozenset(conds)
        raw = data["annual_cap_by_conditions"]
        want = {str(n) for n in range(1, len(conditions) + 1)}
        if not isinstance(raw, dict) or set(raw) != want:
            raise ConfigError(f"must be an object with keys {sorted(want)}", field="annual_cap_by_conditions")
        by_cond = MappingProxyType(
            {int(k): yuan_to_fen(v, f"annual_cap_by_conditions.{k}") for k, v in raw.items()}
        )
    elif "conditions" in data:
        raise ConfigError("only a profile with annual_cap_by_conditions takes conditions", field="conditions")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("must be a string", field="description")
    placeholders = data.get("placeholders", [])  # keys whose values the rules mark * (no public figure)
    if (
        not isinstance(placeholders, list)
        or not all(isinstance(k, str) and k in data and k not in ("name", "placeholders") for k in placeholders)
        or len(set(placeholders)) != len(placeholders)
    ):
        raise ConfigError("must be a list of distinct value keys of this profile", field="placeholders")
    return Profile(
        name=name,
        ratio_by_level=MappingProxyType(ratios),  # type: ignore[arg-type]
        deductible_by_level=MappingProxyType(deductibles),  # type: ignore[arg-type]
        class_b_selfpay_prop=selfpay,
        annual_cap=annual_cap,
        conditions=conditions,
        annual_cap_by_conditions=by_cond,
        description=description,
    )


def load_profile_file(path: Path) -> Profile:
    """Load and validate one profile file; the file name must be `<name>.json`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read profile: {e.strerror}", field=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"not valid JSON: {e}", field=str(path)) from None
    try:
        profile = profile_from_dict(data)
    except ConfigError as e:
        raise ConfigError(str(e), field=str(path)) from None
    if profile.name != Path(path).stem:
        raise ConfigError(f"name {profile.name!r} does not match the file name", field=str(path))
    return profile


def load_profiles(directory: Path | None = None) -> Mapping[str, Profile]:
    """All profiles of a directory (default: the shipped ones), validated."""
    if directory is None:
        return _shipped()
    return _load_dir(Path(directory))


def _load_dir(directory: Path) -> Mapping[str, Profile]:
    files = sorted(directory.glob("*.json"))
    if not files:
        raise ConfigError("no profile files (*.json)", field=str(directory))
    return MappingProxyType({p.name: p for p in map(load_profile_file, files)})


@lru_cache(maxsize=1)
def _shipped() -> Mapping[str, Profile]:
    return _load_dir(PROFILES_DIR)


def get_profile(name: str, profiles: Mapping[str, Profile] | None = None) -> Profile:
    """The profile called `name`; InputError on the `profile` field when unknown."""
    table = load_profiles() if profiles is None else profiles
    try:
        return table[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown profile {name!r}; known: {sorted(table)}", field="profile") from None
