"""Child processes of the demo (local services, the firmware bridge): started in
their own process group, waited for until their health URL answers, and always
stopped on exit (SIGTERM, then SIGKILL), also when the parent is interrupted."""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import httpx

from kiosk.errors import ConfigError, DeviceError


class Child:
    def __init__(self, name: str, argv: Sequence[str], *, health_url: str, log_path: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name, self.argv, self.health_url, self.log_path = name, list(argv), health_url, log_path
        self.env, self.cwd = env, cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> "Child":
        try:  # something else already answering there would be mistaken for our child
            httpx.get(self.health_url, timeout=0.5)
        except httpx.HTTPError:
            pass
        else:
            raise ConfigError(f"{self.name}: {self.health_url} already answers; another instance is running "
                              "(stop it, or use other ports)", code="port_in_use")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(self.env or {})}, cwd=self.cwd, start_new_session=True)
        log.close()
        _CHILDREN.append(self)
        end = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise DeviceError(f"{self.name} exited with {self.proc.returncode} at start; see {self.log_path}",
                                  code="child_failed")
            try:
                if httpx.get(self.health_url, timeout=1.0).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > end:
                self.stop()
                raise DeviceError(f"{self.name} did not answer on {self.health_url} within {timeout_s:.0f} s; "
                                  f"see {self.log_path}", code="child_timeout")
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 5.0) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)

    def kill(self) -> None:
        """Abrupt death (a crash or power loss in the tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


_CHILDREN: list[Child] = []


def stop_all() -> None:
    while _CHILDREN:
        _CHILDREN.pop().stop()


def _on_signal(signum: int, _frame: object) -> None:
    stop_all()
    sys.exit(128 + signum)


def install_cleanup() -> None:
    atexit.register(stop_all)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)


def python() -> str:
    exe = sys.executable
    if not exe:
        raise ConfigError("no Python interpreter path", field="sys.executable")
    return exe
