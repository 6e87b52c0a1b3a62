"""Property: under any mix of single line faults, every command completes with
the right answer and runs exactly once on the device."""
from __future__ import annotations

from pathlib import Path
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge.messages import Cmd
from firmware_bridge.session import Link
from firmware_bridge.sim import Simulator, VirtualMcu

from .conftest import FAST

FAULTS = ["none", "corrupt_tx", "truncate_tx", "duplicate_tx", "drop_rx", "garbage"]

_tmp = tempfile.TemporaryDirectory()
_sim = None
_link = None


def _rig() -> tuple[Simulator, Link]:
    """One simulator and link shared by all examples (starting them per example is slow)."""
    global _sim, _link
    if _sim is None:
        _sim = Simulator(VirtualMcu(), link=Path(_tmp.name) / "mcu").start()
        _link = Link(_sim.url, timing=FAST).start()
        _link.wait_connected(3)
    return _sim, _link


def teardown_module() -> None:
    if _link is not None:
        _link.stop()
    if _sim is not None:
        _sim.close()
    _tmp.cleanup()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(FAULTS), st.integers(1, 2), st.binary(max_size=40)), min_size=1, max_size=8))
def test_faulty_line_still_gives_exactly_once(plan: list[tuple[str, int, bytes]]) -> None:
    sim, link = _rig()
    link.wait_connected(3)
    before = sim.mcu.commands.count(Cmd.ECHO)
    for fault, n, payload in plan:
        f = sim.mcu.faults
        if fault == "garbage":
            sim.mcu.inject(b"\xa5" + payload + b"\xa5\x02")
        elif fault != "none":
            setattr(f, fault, n)
        rsp = link.request(Cmd.ECHO, payload)
        assert rsp.ok and rsp.data == payload
        f.corrupt_tx = f.truncate_tx = f.duplicate_tx = f.drop_rx = 0
    assert sim.mcu.commands.count(Cmd.ECHO) - before == len(plan)
