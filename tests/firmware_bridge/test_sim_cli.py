"""`python -m firmware_bridge.sim` as the demo starts it: a process, a URL line, stdin commands."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.frame import Deframer, Frame, FrameType
from firmware_bridge.messages import Cmd, Evt, HelloReq, Status
from firmware_bridge.peripherals import Peripherals
from firmware_bridge.session import Link
from firmware_bridge.sim import VirtualMcu
from kiosk.config import ROOT

from .conftest import FAST, wait_for


@pytest.mark.parametrize("args", [["--tcp", "0"], []])
def test_sim_process_prints_url_and_obeys_stdin(args: list[str], tmp_path) -> None:
    script = tmp_path / "script.txt"
    script.write_text("# demo start state\npaper out\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_bridge.sim", "--script", str(script), *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        word, url = proc.stdout.readline().split()
        assert word == "URL" and (url.startswith("socket://") if args else url.startswith("/dev/pts/"))
        assert proc.stdout.readline().strip() == "ok"  # the script's "paper out"
        with Link(url, timing=FAST) as link:
            link.wait_connected(5)
            keys: list[bytes] = []
            link.add_listener(lambda c, p: keys.append(p) if c == Evt.KEY else None)
            p = Peripherals(link)
            assert p.print_escpos(b"x").status == "paper_out"
            p.keypad(True)
            proc.stdin.write("keys 12<bs>X<enter>\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "keys sent: 5"
            wait_for(lambda: len(keys) == 5, what="5 key events")
            assert keys == [b"1", b"2", b"\x08", b"X", b"\r"]
            proc.stdin.write("frobnicate\n")
            proc.stdin.flush()
            assert proc.stdout.readline().startswith("unknown command 'frobnicate'")
    finally:
        proc.stdin.close()
        proc.terminate()
        proc.wait(timeout=10)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=600), max_size=6))
def test_device_side_survives_arbitrary_bytes(chunks: list[bytes]) -> None:
    mcu = VirtualMcu()
    out: list[bytes] = []
    mcu.attach(out.append)
    for c in chunks:
        mcu.on_bytes(c)
    mcu.on_idle()
    assert mcu._deframer.buffered < 1033


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.sampled_from([int(c) for c in Cmd]), st.integers(0, 255)), st.binary(max_size=80)), min_size=1, max_size=10))
def test_device_answers_every_well_framed_request_with_one_response(reqs: list[tuple[int, bytes]]) -> None:
    """Any command with any payload gets exactly one RSP with a known status, never an exception."""
    mcu = VirtualMcu()
    d = Deframer()
    out: list = []
    mcu.attach(lambda raw: out.extend(d.feed(raw)))
    mcu.on_bytes(Frame(FrameType.REQ, 0, Cmd.HELLO, HelloReq(1, 1).encode()).encode())
    for i, (cmd, payload) in enumerate(reqs, 1):
        if cmd in (Cmd.REBOOT, Cmd.FW_COMMIT):
            continue  # these reboot the device, tested elsewhere
        out.clear()
        mcu.on_bytes(Frame(FrameType.REQ, i, cmd, payload).encode())
        rsps = [f for f in out if isinstance(f, Frame) and f.type == FrameType.RSP]
        assert len(rsps) == 1 and rsps[0].seq == i and rsps[0].cmd == cmd
        assert rsps[0].payload[0] in Status._value2member_map_


def test_sim_cli_bad_arguments_are_one_line_exit_2(tmp_path, capsys) -> None:
    from firmware_bridge.sim import main

    for args, says in [(["--firmware", "abc"], "MAJOR.MINOR.PATCH"), (["--script", str(tmp_path / "none")], "No such file"),
                       (["--tcp", "99999"], "port")]:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sim: ") and says in err[0], err


def test_script_typo_does_not_kill_the_simulator(tcp_sim) -> None:
    assert tcp_sim.run_command("unplug x").startswith("bad arguments in 'unplug x'")
    assert tcp_sim.run_command("card insert ZZ").startswith("bad arguments")
    assert tcp_sim.run_command("busy two").startswith("bad arguments")
    assert tcp_sim.run_command("status").startswith("flags=")
