"""Who may use the bridge's local API, and which files it may read.

Loopback is not a boundary: every local process can reach 127.0.0.1:8730. So
the bridge makes a per-boot secret at start (32 random bytes, hex), writes it
atomically to a file only the kiosk app's user can read (0600; systemd:
/run/kiosk-bridge/token), and every call but ``GET /v1/status`` (the
watchdog's liveness probe) must present it in ``X-Bridge-Token``. A process
that cannot read the file cannot start, cancel or read an ID entry, see raw
frames, drive the printer, lights, simulator or install firmware.

Firmware is read only from one configured directory, by a bare file name,
opened relative to that directory without following links and without
blocking, checked after open to be a regular file of bounded size, and read
bounded. Every refusal is the same ``FirmwareUnavailable`` so that the answer
does not tell which files exist.
"""
from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
from pathlib import Path

from kiosk.errors import InputError

TOKEN_HEADER = "X-Bridge-Token"
TOKEN_BYTES = 32
_TOKEN_RE = re.compile(r"[0-9a-f]{64}")


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def token_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison of the presented header with the secret."""
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "replace"), expected.encode("ascii"))


def write_private_file(path: Path | str, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data`` (mode 0600: this process's user only).

    The temporary file is created exclusively and without following links, so a
    planted symlink cannot redirect the write; rename makes the swap atomic, so a
    reader sees the old or the new content, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    return path


def write_token_file(path: Path, token: str) -> Path:
    """Atomically replace ``path`` with ``token`` (the bridge's and kiosk app's user only)."""
    return write_private_file(path, token.encode("ascii") + b"\n")


def read_token_file(path: Path | str | None) -> str | None:
    """The secret in ``path``, or None when it is missing, unreadable or malformed."""
    if not path:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 256).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return text if _TOKEN_RE.fullmatch(text) else None


# ------------------------------------------------------------------------------ firmware files

# a bare file name: no separators, no leading dot (so no "." / ".." / hidden files), ends in .kfw
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,122}\.kfw")
UNAVAILABLE_MESSAGE = "no firmware image by that name in the firmware directory"


class FirmwareUnavailable(InputError):
    """The one answer for every refused firmware file (missing, outside, link, FIFO, device, too big...)."""

    def __init__(self) -> None:
        super().__init__(UNAVAILABLE_MESSAGE, code="firmware_unavailable", field="name")


def read_firmware_file(directory: Path, name: str, max_bytes: int) -> bytes:
    """The bytes of ``directory/name``, or FirmwareUnavailable.

    ``name`` must be a bare ``*.kfw`` name. The file is opened relative to the
    directory's descriptor with O_NOFOLLOW (a symlink, even to a file inside,
    is refused) and O_NONBLOCK (a FIFO cannot block the worker), then fstat
    must show a regular file of at most ``max_bytes``; the read stops at
    ``max_bytes + 1`` in case the file grows meanwhile.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise FirmwareUnavailable()
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise FirmwareUnavailable() from None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        raise FirmwareUnavailable() from None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            raise FirmwareUnavailable()
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            try:
                b = os.read(fd, min(left, 1 << 20))
            except OSError:
                raise FirmwareUnavailable() from None
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        if left <= 0:  # grew past the cap after fstat
            raise FirmwareUnavailable()
        return b"".join(chunks)
    finally:
        os.close(fd)
