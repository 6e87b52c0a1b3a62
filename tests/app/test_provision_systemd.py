"""systemd units (hardening, restart, watchdog), their installer, and the sd_notify watchdog wrapper."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kiosk.app.technician_watchdog import notify, watchdog_interval
from kiosk.config import ROOT

UNITS = ROOT / "systemd"
OURS = ["kiosk-app.service", "kiosk-services.service", "kiosk-screen.service"]
SERVERS = ["kiosk-app.service", "kiosk-services.service"]


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's format: sections, repeatable keys, '#' comments (configparser merges repeats)."""
    out: dict[str, dict[str, list[str]]] = {}
    sec = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            sec = out.setdefault(line[1:-1], {})
            continue
        assert sec is not None and "=" in line, f"{path.name}: bad line {raw!r}"
        k, v = line.split("=", 1)
        sec.setdefault(k.strip(), []).append(v.strip())
    return out


def one(unit: dict, key: str, section: str = "Service") -> str:
    vals = unit[section].get(key)
    assert vals, f"{key} missing in [{section}]"
    return vals[-1]


@pytest.mark.parametrize("name", OURS)
def test_units_are_hardened_and_restart(name):
    u = parse_unit(UNITS / name)
    assert one(u, "User") == "kiosk" and one(u, "Group") == "kiosk"
    for key, want in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                      ("PrivateTmp", "yes"), ("Restart", "on-failure"), ("ProtectKernelModules", "yes"),
                      ("ProtectKernelTunables", "yes"), ("ProtectControlGroups", "yes"),
                      ("RestrictSUIDSGID", "yes"), ("LockPersonality", "yes"), ("UMask", "0077")]:
        assert one(u, key) == want, f"{name}: {key}"
    assert one(u, "CapabilityBoundingSet") == "" and one(u, "AmbientCapabilities") == ""
    rw = " ".join(u["Service"]["ReadWritePaths"]).split()
    assert rw and all(p.startswith(("/var/lib/", "/var/log/", "/run/")) for p in rw), rw
    assert one(u, "WantedBy", "Install") == "kiosk.target"


@pytest.mark.parametrize("name,ports", [("kiosk-app.service", ["8740"]), ("kiosk-services.service", ["8710", "8720"])])
def test_servers_notify_readiness_and_feed_a_watchdog(name, ports):
    u = parse_unit(UNITS / name)
    assert one(u, "Type") == "notify" and one(u, "NotifyAccess") == "main"
    assert 5 <= int(one(u, "WatchdogSec")) <= 120
    exe = one(u, "ExecStart")
    assert "-m kiosk.app.technician_watchdog" in exe
    for port in ports:
        assert f"--health http://127.0.0.1:{port}/" in exe
    # every writable path is the unit's own state/log dir
    rw = set(" ".join(u["Service"]["ReadWritePaths"]).split())
    own = {f"/var/lib/{one(u, 'StateDirectory')}", f"/var/log/{one(u, 'LogsDirectory')}"}
    assert rw == own
    assert "@system-service" in u["Service"]["SystemCallFilter"]
    assert one(u, "SystemCallErrorNumber") == "EPERM"  # a filtered call fails, it does not kill the service
    assert one(u, "RestrictAddressFamilies") == "AF_UNIX AF_INET AF_INET6"
    assert "0.0.0.0" not in exe  # loopback only


def test_the_target_pulls_in_every_unit_including_the_bridge():
    t = parse_unit(UNITS / "kiosk.target")
    wants = set(" ".join(t["Unit"]["Wants"]).split())
    assert {"kiosk-app.service", "kiosk-bridge.service", "kiosk-services.service", "kiosk-screen.service"} <= wants


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (lint tests above still run)")
def test_systemd_analyze_verify_accepts_the_installed_form(tmp_path):
    venv_python = ROOT / ".venv" / "bin" / "python"
    names = [n for n in OURS + ["kiosk.target", "kiosk-bridge.service"] if (UNITS / n).exists()]
    if not Path("/usr/bin/cage").exists():
        names.remove("kiosk-screen.service")  # optional unit; the installer skips it there too
    for n in names:
        text = (UNITS / n).read_text().replace("/opt/kiosk", str(ROOT))
        (tmp_path / n).write_text(text)
    assert venv_python.exists()
    r = subprocess.run(["systemd-analyze", "verify", *[f"./{n}" for n in names]], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                if ln.strip() and "kiosk-bridge.service" not in ln.split(":")[0]]
    assert r.returncode == 0 or not problems, r.stdout + r.stderr
    assert not problems, problems


def test_installer_dry_run_changes_nothing_and_says_what_it_would_do(tmp_path):
    r = subprocess.run([str(ROOT / "scripts" / "install_systemd"), "--dry-run", "--prefix", str(ROOT),
                        "--unit-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert list(tmp_path.iterdir()) == []
    for n in ("kiosk-app.service", "kiosk-services.service", "kiosk.target"):
        assert f"would install: systemd/{n} -> {tmp_path}/{n}" in out
    assert "would run: systemctl daemon-reload" in out and "would run: systemctl enable kiosk.target" in out
    user_exists = subprocess.run(["id", "-u", "kiosk"], capture_output=True).returncode == 0
    assert ("useradd --system" in out) != user_exists
    assert "dry run: nothing changed" in out


def test_installer_refuses_unknown_options():
    r = subprocess.run([str(ROOT / "scripts" / "install_systemd"), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr


# --- sd_notify ---------------------------------------------------------------------------

@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    yield path, s
    s.close()


def test_notify_speaks_the_datagram_protocol(notify_socket):
    path, s = notify_socket
    assert notify("READY=1", "STATUS=up", env={"NOTIFY_SOCKET": path})
    assert s.recv(4096) == b"READY=1\nSTATUS=up"
    assert notify("READY=1", env={}) is False  # not under systemd: a no-op
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # armed for another pid
    assert watchdog_interval({}) is None


def test_the_wrapper_reports_ready_pings_while_healthy_and_stops_when_the_server_hangs(notify_socket, tmp_path):
    path, s = notify_socket
    with socket.socket() as p:
        p.bind(("127.0.0.1", 0))
        port = p.getsockname()[1]
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    env.pop("WATCHDOG_PID", None)
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "kiosk.app.technician_watchdog", "--health", f"http://127.0.0.1:{port}/", "--",
         sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(tmp_path), str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        got: list[tuple[float, str]] = []

        def recv_until(pred, timeout):  # type: ignore[no-untyped-def]
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                s.settimeout(max(0.05, end - time.monotonic()))
                try:
                    msg = s.recv(4096).decode()
                except TimeoutError:
                    break
                got.append((time.monotonic(), msg))
                if pred(msg):
                    return msg
            return None

        ready = recv_until(lambda m: "READY=1" in m, 20)
        assert ready and f"MAINPID={wrapper.pid}" in ready
        n0 = len(got)
        recv_until(lambda m: False, 1.2)
        pings = [m for _, m in got[n0:] if m == "WATCHDOG=1"]
        assert len(pings) >= 3  # every ~0.2 s
        # freeze the server: it stops answering, so the pings stop (systemd would restart the unit)
        server = [int(x) for x in subprocess.run(["pgrep", "-P", str(wrapper.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        assert len(server) == 1
        os.kill(server[0], signal.SIGSTOP)
        time.sleep(2.5)  # let an in-flight ping land and the wrapper's 2 s health timeout expire
        recv_until(lambda m: False, 0.05)  # drain what was queued before the freeze took hold
        n1 = len(got)
        recv_until(lambda m: False, 2.0)
        assert not [m for _, m in got[n1:] if m == "WATCHDOG=1"], got[n1:]
        os.kill(server[0], signal.SIGCONT)
        # SIGTERM to the wrapper reaches the server; the wrapper exits with it
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(15) in (0, 143, -15, 1)
        assert recv_until(lambda m: "STOPPING=1" in m, 2) or any("STOPPING=1" in m for _, m in got)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait(5)


def test_the_bridge_unit_is_hardened_restarts_and_feeds_a_watchdog():
    u = parse_unit(UNITS / "kiosk-bridge.service")
    assert one(u, "User") == "kiosk" and one(u, "Restart") == "on-failure"
    for key, want in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                      ("ProtectHome", "yes"), ("Type", "notify"), ("NotifyAccess", "main")]:
        assert one(u, key) == want, key
    assert 5 <= int(one(u, "WatchdogSec")) <= 120
    exe = one(u, "ExecStart")
    assert "-m kiosk.app.technician_watchdog --health http://127.0.0.1:8730/v1/status --" in exe
    assert exe.endswith("-m firmware_bridge.service --host 127.0.0.1 --port 8730")
    assert "ReadWritePaths" not in u["Service"]  # it writes nothing: the whole file system stays read-only
    assert one(u, "CapabilityBoundingSet") == ""


def _size(v: str) -> int:
    return int(v[:-1]) << {"K": 10, "M": 20, "G": 30}[v[-1]] if v[-1] in "KMG" else int(v)


@pytest.mark.parametrize("name", OURS + ["kiosk-bridge.service"])
def test_every_unit_has_resource_limits(name):
    """A FIFO, /dev/zero or a request flood must hit the unit's own ceiling, not starve the terminal."""
    u = parse_unit(UNITS / name)
    assert 0 < _size(one(u, "MemoryHigh")) < _size(one(u, "MemoryMax"))
    assert one(u, "MemorySwapMax") == "0"
    assert 0 < int(one(u, "TasksMax")) <= 1024
    assert 0 < int(one(u, "LimitNOFILE")) <= 8192
    assert one(u, "LimitCORE") == "0"  # no core dumps of processes holding ID numbers, faces or keys


def test_the_bridge_token_lives_in_its_runtime_dir_and_the_app_reads_it_there():
    b, a = parse_unit(UNITS / "kiosk-bridge.service"), parse_unit(UNITS / "kiosk-app.service")
    assert _size(one(b, "MemoryMax")) <= 256 << 20 and int(one(b, "TasksMax")) <= 128
    assert one(b, "RuntimeDirectory") == "kiosk-bridge" and one(b, "RuntimeDirectoryMode") == "0700"
    assert one(b, "StateDirectory") == "kiosk-bridge" and one(b, "StateDirectoryMode") == "0700"
    env = lambda u: dict(kv.split("=", 1) for line in u["Service"]["Environment"] for kv in line.split())  # noqa: E731
    assert env(b)["KIOSK_BRIDGE_TOKEN_FILE"] == env(a)["KIOSK_BRIDGE_TOKEN_FILE"] == "/run/kiosk-bridge/token"
    assert env(b)["KIOSK_BRIDGE_FIRMWARE_DIR"] == "/var/lib/kiosk-bridge/firmware"
    assert one(a, "User") == one(b, "User")  # the token file (0600) is readable by the kiosk app's user only


# --- the nightly day-end (kiosk reconcile) -------------------------------------------------------------
def test_the_reconcile_unit_is_a_hardened_oneshot_with_limits_run_nightly_by_its_timer():
    s = parse_unit(UNITS / "kiosk-reconcile.service")
    assert one(s, "Type") == "oneshot" and one(s, "User") == "kiosk" and one(s, "Group") == "kiosk"
    for key, want in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                      ("PrivateTmp", "yes"), ("PrivateDevices", "yes"), ("ProtectKernelModules", "yes"),
                      ("ProtectKernelTunables", "yes"), ("ProtectControlGroups", "yes"), ("RestrictSUIDSGID", "yes"),
                      ("LockPersonality", "yes"), ("UMask", "0077"), ("MemorySwapMax", "0"), ("LimitCORE", "0"),
                      ("SystemCallErrorNumber", "EPERM")]:
        assert one(s, key) == want, key
    assert one(s, "CapabilityBoundingSet") == "" and one(s, "AmbientCapabilities") == ""
    assert 0 < _size(one(s, "MemoryHigh")) < _size(one(s, "MemoryMax")) <= 512 << 20
    assert 0 < int(one(s, "TasksMax")) <= 64 and 0 < int(one(s, "LimitNOFILE")) <= 4096
    rw = " ".join(s["Service"]["ReadWritePaths"]).split()
    assert rw and all(p.startswith(("/var/lib/kiosk", "/var/log/kiosk")) for p in rw), rw
    # yesterday (Asia/Shanghai, the code decides), the report kept; a discrepancy (exit 1) is not retried
    exe = one(s, "ExecStart")
    assert exe.startswith("/opt/kiosk/.venv/bin/kiosk reconcile yesterday") and "--save /var/log/kiosk/" in exe
    assert one(s, "Restart") == "on-failure" and one(s, "RestartPreventExitStatus") == "1"
    assert "Install" not in s  # started by its timer only
    t = parse_unit(UNITS / "kiosk-reconcile.timer")
    assert one(t, "OnCalendar", "Timer").endswith("Asia/Shanghai") and one(t, "Persistent", "Timer") == "true"
    assert one(t, "Unit", "Timer") == "kiosk-reconcile.service"
    assert one(t, "WantedBy", "Install") == "kiosk.target"
    wants = set(" ".join(parse_unit(UNITS / "kiosk.target")["Unit"]["Wants"]).split())
    assert "kiosk-reconcile.timer" in wants


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verifies_the_reconcile_units(tmp_path):
    names = ["kiosk-reconcile.service", "kiosk-reconcile.timer"]
    for n in names:
        (tmp_path / n).write_text((UNITS / n).read_text().replace("/opt/kiosk", str(ROOT)))
    r = subprocess.run(["systemd-analyze", "verify", *[f"./{n}" for n in names]], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    cal = subprocess.run(["systemd-analyze", "calendar", "*-*-* 02:30:00 Asia/Shanghai"], capture_output=True,
                         text=True, timeout=30)
    assert cal.returncode == 0, cal.stderr


def test_the_installer_installs_the_timer(tmp_path):
    r = subprocess.run([str(ROOT / "scripts" / "install_systemd"), "--dry-run", "--prefix", str(ROOT),
                        "--unit-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for n in ("kiosk-reconcile.service", "kiosk-reconcile.timer"):
        assert f"would install: systemd/{n} -> {tmp_path}/{n}" in r.stdout


def test_the_screen_secret_lives_in_the_apps_runtime_dir_and_only_the_launcher_hands_it_to_the_browser():
    a, s = parse_unit(UNITS / "kiosk-app.service"), parse_unit(UNITS / "kiosk-screen.service")
    env = lambda u: dict(kv.split("=", 1) for line in u["Service"]["Environment"] for kv in line.split())  # noqa: E731
    assert env(a)["KIOSK_SCREEN_TOKEN_FILE"] == "/run/kiosk-app/screen-token"
    assert one(a, "RuntimeDirectory") == "kiosk-app" and one(a, "RuntimeDirectoryMode") == "0700"
    assert one(a, "UMask") == "0077"
    assert one(a, "User") == one(s, "User") == "kiosk"  # the 0600 file is readable by the browser's user only
    start = one(s, "ExecStart")
    assert start.startswith("/opt/kiosk/.venv/bin/python -m kiosk.app.screen.launch ")
    assert "--token-file /run/kiosk-app/screen-token" in start and "--start-file /run/kiosk-screen/start.html" in start
    # the browser opens the private start page: no secret and no screen URL on its (world-readable) command line
    browser = start.split(" -- ", 1)[1]
    assert "--app=file:///run/kiosk-screen/start.html" in browser and "#k=" not in start and "8740/screen" not in browser
    assert one(s, "RuntimeDirectory") == "kiosk-screen" and one(s, "RuntimeDirectoryMode") == "0700"
    # a restart of the app (new secret) takes the browser along; a launcher exit 75 (secret changed) restarts it
    assert "kiosk-app.service" in s["Unit"]["PartOf"] and one(s, "Restart") == "on-failure"
