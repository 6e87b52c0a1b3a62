"""The simulator produces every documented status code the bridge must handle (BUSY, PERIPHERAL_FAULT, NO_CARD)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from firmware_bridge.bridge import Bridge
from firmware_bridge.client import BridgeClient
from firmware_bridge.messages import Cmd, Status
from firmware_bridge.service import create_app
from firmware_bridge.session import Link
from firmware_bridge.sim import Simulator
from kiosk.errors import DeviceError


@pytest.fixture
def client(link: Link, sim: Simulator) -> Iterator[BridgeClient]:
    app = create_app(Bridge(link), sim=sim)
    with TestClient(app) as http:
        yield BridgeClient("http://testserver", http=http, token=app.state.token)


def test_busy_is_an_answer_not_a_link_failure(client: BridgeClient, sim: Simulator, link: Link) -> None:
    assert sim.run_command("busy 1") == "ok"
    with pytest.raises(DeviceError) as ei:
        client.light("fill", 20)
    assert ei.value.code == "device_busy"
    assert sim.mcu.fill == 0 and link.stats.retransmits == 0  # not executed, not retransmitted
    client.light("fill", 20)
    assert sim.mcu.fill == 20 and client.status()["state"] == "connected"


def test_printer_fault(client: BridgeClient, sim: Simulator) -> None:
    sim.run_command("fault printer")
    r = client.print_escpos(b"\x1b@x\n")
    assert r == {"printed": False, "status": "peripheral_fault", "paper_out": False, "cover_open": False, "bytes_sent": 0}
    assert sim.mcu.printed == b""
    st = client.self_test()
    assert st["passed"] is False and st["results"]["printer"] is False and st["results"]["keypad"] is True
    sim.run_command("fault off")
    assert client.print_escpos(b"\x1b@x\n")["printed"] and sim.mcu.printed == b"\x1b@x\n"


def test_card_reader_fault_and_no_card(client: BridgeClient, sim: Simulator) -> None:
    sim.run_command("fault card")
    with pytest.raises(DeviceError) as ei:
        client.card()
    assert ei.value.code == "device_peripheral_fault"
    assert client.self_test()["results"]["card_reader"] is False
    sim.run_command("fault off")
    sim.run_command("nocard on")  # a reader that answers NO_CARD instead of present=0
    assert link_status(sim, Cmd.CARD_STATUS) == Status.NO_CARD
    assert client.card() == {"present": False, "atr": ""}
    sim.run_command("card insert 3B00")
    assert client.card() == {"present": True, "atr": "3B00"}
    assert sim.run_command("fault fan").startswith("fault: expected")


def link_status(sim: Simulator, cmd: int) -> int:
    return sim.mcu._execute(cmd, b"")[0]


def test_retransmission_of_a_command_still_running_is_not_run_twice(link: Link, sim: Simulator) -> None:
    """A slow command: the host's exec timeout fires and it resends; the device replays, never re-runs."""
    sim.run_command("slow 0.15")
    n = sim.mcu.commands.count(Cmd.LIGHT_SET)
    rsp = link.request(Cmd.LIGHT_SET, b"\x00\x2a", exec_timeout=0.1)
    assert rsp.status == Status.OK and sim.mcu.fill == 42
    assert link.stats.retransmits >= 1
    assert sim.mcu.commands.count(Cmd.LIGHT_SET) == n + 1
