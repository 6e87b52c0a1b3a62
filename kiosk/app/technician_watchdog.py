"""systemd readiness and watchdog for the terminal's processes, with no dependency.

    python -m kiosk.app.technician_watchdog --health http://127.0.0.1:8740/technician/healthz -- CMD ARGS...

runs CMD as a child and speaks the sd_notify protocol for it (the units use
Type=notify): READY=1 once every health URL answers, WATCHDOG=1 every
WatchdogSec/2 while they keep answering, STOPPING=1 on the way out. A process
whose event loop hangs stops answering HTTP, the pings stop, and systemd
restarts the unit; a thread pinging from inside the process could not tell.
Outside systemd (no NOTIFY_SOCKET) it just runs the child.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence


def notify(*states: str, env: Mapping[str, str] | None = None) -> bool:
    """Send sd_notify states ("READY=1", "WATCHDOG=1", "STATUS=...") to systemd. False when not under systemd."""
    env = os.environ if env is None else env
    path = env.get("NOTIFY_SOCKET", "")
    if not path or not states:
        return False
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(path)
            s.sendall("\n".join(states).encode())
        except OSError:
            return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Half of WatchdogSec in seconds (how often to ping), or None when no watchdog is armed for us."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        v = int(usec)
    except ValueError:
        return None
    return v / 2_000_000 if v > 0 else None


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Any answer below 500 counts: the server's loop is turning."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback URLs from the unit file
            return int(r.status) < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (OSError, ValueError):
        return False


def supervise(cmd: Sequence[str], health: Sequence[str], *, env: Mapping[str, str] | None = None,
              check: Callable[[str], bool] = http_ok, start_timeout: float = 120.0,
              poll: float = 0.2) -> int:
    """Run `cmd`, report readiness/watchdog for it; return its exit status."""
    env = dict(os.environ if env is None else env)
    interval = watchdog_interval(env)
    child_env = {k: v for k, v in env.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    child = subprocess.Popen(list(cmd), env=child_env)

    def forward(signum: int, _frame: object) -> None:
        notify("STOPPING=1", env=env)
        child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        t0 = time.monotonic()
        while not all(check(u) for u in health):
            if child.poll() is not None:
                return child.returncode
            if time.monotonic() - t0 > start_timeout:
                notify("STATUS=not healthy after start, giving up", env=env)
                child.terminate()
                child.wait(15)
                return 1
            time.sleep(poll)
        notify("READY=1", f"STATUS=serving; healthy: {' '.join(health)}", f"MAINPID={os.getpid()}", env=env)
        last_ping = 0.0
        while child.poll() is None:
            now = time.monotonic()
            if interval and now - last_ping >= interval:
                if all(check(u) for u in health):
                    notify("WATCHDOG=1", env=env)
                    last_ping = now
                else:  # no ping: systemd's watchdog fires and restarts the unit
                    notify("STATUS=health check failing", env=env)
                    last_ping = now
            try:
                child.wait(timeout=min(poll * 5, interval or 1.0))
            except subprocess.TimeoutExpired:
                pass
        return child.returncode
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kiosk.app.technician_watchdog", description=__doc__.splitlines()[0])
    ap.add_argument("--health", action="append", default=[], help="URL that must answer (<500); repeatable")
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- command and arguments")
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("a command is required after --")
    rc = supervise(cmd, a.health, start_timeout=a.start_timeout)
    return rc if rc >= 0 else 128 - rc  # killed by a signal -> 128+N, like a shell


if __name__ == "__main__":
    sys.exit(main())
