from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_bridge.session import Link, Timing
from firmware_bridge.sim import Simulator, VirtualMcu

# short timers keep the fault tests fast; ratios as in the defaults
FAST = Timing(rto=0.03, retries=3, exec_timeout=1.0, heartbeat=0.2, gap=0.01, backoff_min=0.02, backoff_max=0.2)


def wait_for(pred, timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    """A virtual MCU on a real pty, reachable through a stable symlink."""
    with Simulator(VirtualMcu(), link=tmp_path / "mcu") as s:
        yield s


@pytest.fixture
def tcp_sim() -> Iterator[Simulator]:
    with Simulator(VirtualMcu(), tcp=0) as s:
        yield s


@pytest.fixture
def link(sim: Simulator) -> Iterator[Link]:
    with Link(sim.url, timing=FAST) as lk:
        lk.wait_connected(3)
        yield lk
