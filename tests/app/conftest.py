"""Shared fixtures of the app tests: the real face pipeline, a real firmware
bridge (simulated MCU on a pty, the bridge's HTTP API on a free port), images
from ../shared/data."""
from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from kiosk.config import SHARED

DATA = SHARED / "data"
FACES = DATA / "faces"
CASIA = FACES / "casia-facev5-dev"
TWO_PEOPLE = FACES / "misc" / "examples_two_people.jpg"
NUAA_SPOOF = DATA / "liveness" / "nuaa-train" / "spoof" / "0001_0001_00_00_01_116.jpg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def pipeline():
    from kiosk.vision.pipeline import FacePipeline

    return FacePipeline.from_settings()


@pytest.fixture(scope="session")
def device_seal():
    """Seal templates with the real sealing code to a key generated for the test."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from kiosk.security.seal import SealContext, seal

    key = X25519PrivateKey.generate()

    def _seal(template: np.ndarray, session_id: str, purpose: str) -> str:
        blob = seal(np.asarray(template, dtype=np.float32).tobytes(), key.public_key(), "test-k1",
                    SealContext("test-device", session_id, purpose))
        return base64.b64encode(blob).decode()

    return _seal


@pytest.fixture
def bridge() -> Iterator[tuple[object, object]]:
    """(BridgeClient, Simulator): the real bridge over a pty to the simulated MCU, served over HTTP."""
    from firmware_bridge.bridge import Bridge
    from firmware_bridge.client import BridgeClient
    from firmware_bridge.service import create_app
    from firmware_bridge.session import Link
    from firmware_bridge.sim import Simulator

    from kiosk.app.runtime import ServerThread

    sim = Simulator().start()
    link = Link(sim.url).start()
    port = free_port()
    app = create_app(Bridge(link), sim=sim)
    server = ServerThread(app, port=port).start()
    client = BridgeClient(f"http://127.0.0.1:{port}", token=app.state.token)
    try:
        yield client, sim
    finally:
        client.close()
        server.stop()
        link.stop()
        sim.close()


def casia(person: int, shot: int) -> Path:
    return CASIA / f"{person:03d}" / f"{person:03d}_{shot}.png"
