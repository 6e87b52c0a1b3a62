"""Nothing personal can cross the fleet boundary: no model has a field for it, all forbid extras."""
from __future__ import annotations

import inspect

import pytest
from pydantic import BaseModel, ValidationError

from kiosk.fleet import models

PERSONAL = ("person", "psn", "id_number", "idno", "certno", "name", "face", "template", "score", "phone",
            "similarity", "image")


def _models() -> list[type[BaseModel]]:
    return [m for _, m in inspect.getmembers(models, inspect.isclass)
            if issubclass(m, BaseModel) and m.__module__ == models.__name__]


def test_no_model_has_a_personal_field() -> None:
    ms = _models()
    assert len(ms) >= 10
    for m in ms:
        for f in m.model_fields:
            low = f.lower()
            hits = [p for p in PERSONAL if p in low]
            assert not hits, f"{m.__name__}.{f} looks personal"


def test_every_model_forbids_extra_fields() -> None:
    for m in _models():
        assert m.model_config.get("extra") == "forbid", m.__name__


def test_reason_codes_cannot_carry_digits() -> None:
    with pytest.raises(ValidationError):
        models.OutcomeCount(outcome="failed", reason="id110101199003077777", n=1)
    assert models.OutcomeCount(outcome="failed", reason="spoof_suspected", n=1).reason == "spoof_suspected"
