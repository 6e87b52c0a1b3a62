"""Face-pay and credit-pay terminal software for medical-insurance counters."""
from __future__ import annotations

__version__ = "0.1.0"
