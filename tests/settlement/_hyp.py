"""Hypothesis settings for the settlement tests: enough examples to find edge
cases, no per-example deadline (CI shares 2 cores), and quick overall."""
from __future__ import annotations

from hypothesis import HealthCheck, settings

SETTLEMENT = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
