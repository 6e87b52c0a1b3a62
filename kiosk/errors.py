"""The project's exception tree: faults carry a machine code and a human message.

Expected outcomes (spoof detected, bill rejected, limit exceeded) are values,
not exceptions; these classes are for faults and invalid input. A dependency's
errors are translated into one of these at the boundary that calls it.

    KioskError
    ├── InputError            bad input from a person or an integrating system
    ├── ConfigError           a configuration file or profile is unusable
    ├── IntegrityError        a file, signature, chain or journal failed a check
    ├── ConflictError         same idempotency key, different request
    ├── StorageError          the database refused or is unreachable
    ├── DeviceError           a peripheral or the serial link failed
    └── RemoteError           a remote party failed or answered with an error
"""
from __future__ import annotations


class KioskError(Exception):
    """Base of every fault the project raises on purpose."""

    code: str = "kiosk_error"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field

    def __str__(self) -> str:  # one clear line, naming the field when known
        return f"{self.field}: {self.message}" if self.field else self.message

    def to_dict(self) -> dict[str, str]:
        d = {"code": self.code, "message": self.message}
        if self.field:
            d["field"] = self.field
        return d


class InputError(KioskError):
    code = "invalid_input"


class ConfigError(KioskError):
    code = "config_error"


class IntegrityError(KioskError):
    code = "integrity_error"


class ConflictError(KioskError):
    code = "conflict"


class StorageError(KioskError):
    code = "storage_error"


class DeviceError(KioskError):
    code = "device_error"


class RemoteError(KioskError):
    code = "remote_error"
