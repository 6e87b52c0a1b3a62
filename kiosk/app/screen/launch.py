"""Starts the kiosk browser on the patient's screen with this start's secret (systemd: kiosk-screen.service).

    python -m kiosk.app.screen.launch --token-file /run/kiosk-app/screen-token \\
        --start-file /run/kiosk-screen/start.html -- /usr/bin/cage -d -- /usr/bin/chromium \\
        --kiosk --app=file:///run/kiosk-screen/start.html ...

The secret must not appear on the browser's command line (/proc/<pid>/cmdline is world-readable), so the
launcher waits for the kiosk app's token file, writes a start page (0600, in the screen unit's private
runtime directory) that replaces itself with http://127.0.0.1:8740/screen/#k=<secret>, and runs the
command. The fragment never reaches the server; the page trades it for its session cookie.

When the kiosk app restarts it writes a new secret and the browser's cookie is void: the launcher sees the
file change, stops the browser and exits 75, and systemd (Restart=always) starts it again with the new one.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from firmware_bridge.access import write_private_file
from kiosk.app.screen.access import read_token_file

RESTART = 75  # EX_TEMPFAIL: the secret changed, start again


def start_page(url: str, token: str) -> str:
    """A page that opens the screen with the secret in the fragment and leaves no history entry behind."""
    target = json.dumps(url.split("#", 1)[0] + "#k=" + token)
    return ("<!doctype html><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">"
            f"<title>kiosk</title><script>location.replace({target});</script>\n")


def write_private(path: Path, text: str) -> Path:
    """Atomically replace `path` with `text`, mode 0600, never following a planted link."""
    return write_private_file(path, text.encode())


def wait_token(path: Path, timeout_s: float, poll_s: float = 0.2) -> str | None:
    end = time.monotonic() + timeout_s
    while True:
        tok = read_token_file(path)
        if tok or time.monotonic() >= end:
            return tok
        time.sleep(poll_s)


def run(token_file: Path, start_file: Path, url: str, command: list[str], *, wait_s: float = 120.0,
        poll_s: float = 1.0) -> int:
    token = wait_token(token_file, wait_s)
    if token is None:
        print(f"no screen secret in {token_file} after {wait_s:.0f} s (is the kiosk app up?)", file=sys.stderr)
        return 1
    write_private(start_file, start_page(url, token))
    child = subprocess.Popen(command)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        if child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while True:
        try:
            rc = child.wait(poll_s)
            return 0 if stopping else rc
        except subprocess.TimeoutExpired:
            pass
        if not stopping and read_token_file(token_file) != token:  # the app restarted: our cookie is void
            print("the kiosk app's screen secret changed: restarting the browser", file=sys.stderr)
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            return RESTART


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kiosk.app.screen.launch", description=__doc__.split("\n")[0])
    p.add_argument("--token-file", type=Path, required=True, help="the kiosk app's screen secret (KIOSK_SCREEN_TOKEN_FILE)")
    p.add_argument("--start-file", type=Path, required=True, help="where to write the start page (private dir)")
    p.add_argument("--url", default="http://127.0.0.1:8740/screen/")
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the secret")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- the browser command (opens file://START_FILE)")
    a = p.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("no browser command after --")
    return run(a.token_file, a.start_file, a.url, cmd, wait_s=a.wait)


if __name__ == "__main__":
    sys.exit(main())
