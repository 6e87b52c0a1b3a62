"""What a POS order must be before the terminal calls a patient to the counter.

An order that can never settle must be refused when the POS sends it (HTTP 422 naming the field,
nothing stored), not after the patient has looked into the camera and confirmed: amounts in ASCII
digits, every price, quantity and line above 0.00 (a 0.00 order would otherwise come back "paid"),
bounded sizes, a deposit the credit line can hold, and catalogue codes the centre knows.

The catalogue is the centre's (transaction 1312; the centre alone decides class A/B/C). The terminal
fetches it, caches it in its data dir (`catalogue.json`) and checks each new order's codes against
that copy. A code it does not know makes it fetch again (at most every `retry_s`), so a code the
centre added yesterday is not refused; a copy older than `max_age_s` is refreshed on the next order.
With no copy at all and the centre unreachable the order is refused as retryable (502
`catalogue_unavailable`): the terminal cannot tell, and without the centre nobody could pay anyway.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from kiosk.clock import Clock, SystemClock
from kiosk.config import Settings, load
from kiosk.credit.rules import CEILING as CREDIT_CEILING
from kiosk.errors import ConfigError, InputError, KioskError, RemoteError
from kiosk.money import fen_to_yuan, parse_decimal, round_fen, yuan_to_fen
from kiosk.settlement.bill import MAX_PRICE, MAX_QTY

log = logging.getLogger("kiosk.app")

# The centre (kiosk.services.centre.models.FeeDetail) takes at most 1000 lines and amounts below
# 10^12 yuan; the limits below never let a bill past either.
MAX_LINES = 1000
MAX_BILL_FEN = 10**12  # 10^10 yuan


@dataclass(frozen=True)
class OrderLimits:
    max_deposit_fen: int = CREDIT_CEILING
    max_bill_fen: int = 100_000_000  # 1,000,000.00 yuan
    max_lines: int = 500

    @classmethod
    def from_settings(cls, s: Settings | None = None) -> "OrderLimits":
        """KIOSK_POS_MAX_DEPOSIT / _BILL (yuan) and _LINES; the deposit never above the credit line's
        20,000-yuan ceiling (the deposit is a hold on that line: a larger one can never be held)."""
        s = s or load()
        try:
            dep = yuan_to_fen(s.pos_max_deposit, "pos_max_deposit")
            bill = yuan_to_fen(s.pos_max_bill, "pos_max_bill")
        except InputError as e:
            raise ConfigError(f"KIOSK_{(e.field or '').upper()}: {e.message}", field=e.field) from None
        if dep <= 0 or bill <= 0 or s.pos_max_lines < 1:
            raise ConfigError("pos_max_deposit, pos_max_bill and pos_max_lines must be more than 0",
                              field="pos_max_deposit")
        return cls(min(dep, CREDIT_CEILING), min(bill, MAX_BILL_FEN), min(s.pos_max_lines, MAX_LINES))


def check_order(mode: str, items: list[Any] | None, deposit: str | None, admission_order_id: str | None,
                limits: OrderLimits) -> None:
    """Everything about an order that needs no I/O. InputError naming the field; nothing is stored."""
    if mode == "admission":
        if items is not None:
            raise InputError("an admission only holds a deposit; the bill comes with the discharge order",
                             field="bill")
        if admission_order_id:
            raise InputError("is only for a discharge", field="admission_order_id")
        if deposit is None:
            raise InputError("is required (more than 0.00) for an admission", field="deposit")
        fen = yuan_to_fen(deposit, "deposit")
        if fen <= 0:
            raise InputError("must be more than 0.00", field="deposit")
        if fen > limits.max_deposit_fen:
            raise InputError(f"is above {fen_to_yuan(limits.max_deposit_fen)}, the most a credit line can hold "
                             "for a deposit", field="deposit")
        return
    if deposit is not None:
        raise InputError("is only for an admission", field="deposit")
    if mode != "discharge" and admission_order_id:
        raise InputError("is only for a discharge", field="admission_order_id")
    if items is None:
        raise InputError("is required for outpatient and discharge orders", field="bill")
    if not items:
        raise InputError("the bill has no lines", field="bill.items")
    if len(items) > limits.max_lines:
        raise InputError(f"at most {limits.max_lines} lines per bill", field="bill.items")
    total = 0
    for i, it in enumerate(items):
        where = f"bill.items[{i}]"
        price = _positive(it.price, f"{where}.price", MAX_PRICE, "yuan per unit")
        qty = _positive(it.qty, f"{where}.qty", MAX_QTY, "units")
        line = round_fen(price * qty)
        if line <= 0:
            raise InputError(f"price x qty comes to {fen_to_yuan(line)}: a line must come to at least 0.01",
                             field=where)
        total += line
    if total > limits.max_bill_fen:
        raise InputError(f"the bill comes to {fen_to_yuan(total)}, above the {fen_to_yuan(limits.max_bill_fen)} "
                         "a counter order may be", field="bill.items")


def _positive(value: str, field: str, upper: Decimal, unit: str) -> Decimal:
    d = parse_decimal(value, field, max_dp=4)  # ASCII digits only: "１０" is refused here
    if d <= 0:
        raise InputError(f"must be more than 0, got {value!r}", field=field)
    if d > upper:
        raise InputError(f"must be at most {upper} {unit}, got {value!r}", field=field)
    return d


def check_codes(codes: list[str], catalogue: "Catalogue") -> None:
    """Every code in the centre's catalogue (InputError `unknown_code` naming the first line that is not)."""
    unknown = set(catalogue.unknown(codes))
    for i, c in enumerate(codes):
        if c in unknown:
            raise InputError(f"{c!r} is not in the insurance centre's catalogue", code="unknown_code",
                             field=f"bill.items[{i}].code")


# ----------------------------------------------------------------------------- the catalogue

class CatalogueSource(Protocol):
    def catalogue(self) -> dict[str, str]: ...


CATALOGUE_FILE = "catalogue.json"


class Catalogue:
    """The centre's catalogue as this terminal last fetched it: code -> chrgitm_lv (01/02/03)."""

    def __init__(self, data_dir: Path, source: CatalogueSource | None, *, clock: Clock | None = None,
                 max_age_s: float = 86400.0, retry_s: float = 30.0) -> None:
        self.path = Path(data_dir) / CATALOGUE_FILE
        self.source = source
        self.clock = clock or SystemClock()
        self.max_age_s = max_age_s
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._codes: dict[str, str] | None = None
        self._fetched_at = 0.0
        self._last_try = -float("inf")  # monotonic
        self._load()

    @property
    def loaded(self) -> bool:
        return self._codes is not None

    def _load(self) -> None:
        try:
            rec = json.loads(self.path.read_text(encoding="utf-8"))
            codes, at = rec["codes"], rec["fetched_at"]
            if not (isinstance(codes, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in codes.items())
                    and isinstance(at, (int, float))):
                raise ValueError("unexpected content")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("cached catalogue %s is unusable (%s): fetching it again", self.path, type(e).__name__)
            return
        self._codes, self._fetched_at = codes, float(at)

    def refresh(self) -> bool:
        """Fetch the whole catalogue from the centre and cache it. False (logged) when it cannot."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> bool:
        if self.source is None:
            return False
        self._last_try = time.monotonic()
        try:
            codes = self.source.catalogue()
        except (KioskError, OSError) as e:
            log.warning("catalogue not fetched from the centre: %s", e)
            return False
        if not codes:  # an empty answer would refuse every order: keep what we had
            log.warning("the centre answered an empty catalogue: keeping the cached one")
            return False
        now = self.clock.now().timestamp()
        data = json.dumps({"fetched_at": now, "codes": codes}, ensure_ascii=False, sort_keys=True).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError as e:  # still usable from memory; the next start fetches again
            log.warning("catalogue not cached at %s: %s", self.path, e)
        self._codes, self._fetched_at = codes, now
        log.info("catalogue fetched from the centre: %d codes", len(codes))
        return True

    def _may_try(self) -> bool:
        return time.monotonic() - self._last_try >= self.retry_s

    def unknown(self, codes: list[str]) -> list[str]:
        """The codes not in the catalogue (fetching it first when missing or stale, and once more,
        rate-limited, when a code is not in the copy). RemoteError when there is no copy at all."""
        with self._lock:
            stale = self.clock.now().timestamp() - self._fetched_at > self.max_age_s
            if (self._codes is None or stale) and self._may_try():
                self._refresh()
            if self._codes is None:
                raise RemoteError("the terminal has no copy of the insurance centre's catalogue and cannot reach "
                                  "the centre to check the bill's codes; send the order again shortly",
                                  code="catalogue_unavailable", field="bill.items")
            missing = [c for c in codes if c not in self._codes]
            if missing and self._may_try() and self._refresh():
                missing = [c for c in codes if c not in self._codes]
            return missing

    def warm(self) -> None:
        """Fetch in the background when there is no fresh copy (at start-up: the first order need not wait)."""
        if self._codes is not None and self.clock.now().timestamp() - self._fetched_at <= self.max_age_s:
            return
        threading.Thread(target=self.refresh, name="catalogue", daemon=True).start()
