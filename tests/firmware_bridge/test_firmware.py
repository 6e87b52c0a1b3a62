"""Signed, chunked, resumable firmware update against the simulated MCU."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_bridge.firmware import FirmwareUpdater, SignedImage, _main, sign_image
from firmware_bridge.messages import Cmd, Status
from firmware_bridge.session import Link, LinkState
from firmware_bridge.sim import Simulator, VirtualMcu
from kiosk.errors import DeviceError, IntegrityError, InputError

from .conftest import FAST, wait_for

CHUNK = 64
KEY = Ed25519PrivateKey.generate()
IMAGE = sign_image(KEY, (1, 1, 0), os.urandom(CHUNK * 6 + 17))  # 7 chunks, the last one short


@pytest.fixture
def fw_sim(tmp_path: Path):
    with Simulator(VirtualMcu(trusted_key=KEY.public_key()), link=tmp_path / "mcu") as s:
        yield s


@pytest.fixture
def fw_link(fw_sim: Simulator):
    with Link(fw_sim.url, timing=FAST) as lk:
        lk.wait_connected(3)
        yield lk


def test_image_file_round_trip_and_checks() -> None:
    blob = IMAGE.to_bytes()
    assert SignedImage.from_bytes(blob) == IMAGE
    assert IMAGE.verify(KEY.public_key())
    assert not IMAGE.verify(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(IntegrityError):
        SignedImage.from_bytes(blob[:-1])
    with pytest.raises(IntegrityError):
        SignedImage.from_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(InputError):
        SignedImage.from_bytes(b"MZ" + blob[2:])


def test_full_update_switches_version(fw_link: Link, fw_sim: Simulator) -> None:
    res = FirmwareUpdater(fw_link, chunk_size=CHUNK).update(IMAGE)
    assert res.complete and res.resumed_from == 0 and res.chunks_sent == 7
    assert fw_sim.mcu.firmware == (1, 1, 0) and fw_link.info.firmware == (1, 1, 0)


@pytest.mark.parametrize("boundary", range(0, 8))
def test_interrupted_at_every_chunk_boundary_and_resumed(boundary: int, fw_link: Link, fw_sim: Simulator) -> None:
    up = FirmwareUpdater(fw_link, chunk_size=CHUNK)
    first = up.update(IMAGE, stop_after_chunks=boundary)
    if boundary < 7:
        assert not first.complete and fw_sim.mcu.firmware == (1, 0, 0)  # nothing switched yet
        assert len(fw_sim.mcu.staging.data) == boundary * CHUNK
        second = up.update(IMAGE)
        assert second.resumed_from == boundary * CHUNK
        assert second.chunks_sent == 7 - boundary  # no chunk sent twice
    assert fw_sim.mcu.firmware == (1, 1, 0)


def test_resume_after_cable_pull_mid_update(fw_link: Link, fw_sim: Simulator) -> None:
    up = FirmwareUpdater(fw_link, chunk_size=CHUNK)
    sent = []

    def pull_after_three(offset: int, size: int) -> None:
        sent.append(offset)
        if len(sent) == 3:
            fw_sim.unplug(0.2)

    with pytest.raises(DeviceError):
        up.update(IMAGE, progress=pull_after_three)
    wait_for(lambda: fw_link.state != LinkState.CONNECTED, what="disconnected")
    fw_link.wait_connected(3)
    res = up.update(IMAGE)
    assert res.complete and res.resumed_from == 3 * CHUNK
    assert res.chunks_sent == 4 and fw_sim.mcu.firmware == (1, 1, 0)


def test_resume_after_mcu_reboot_mid_update(fw_link: Link, fw_sim: Simulator) -> None:
    up = FirmwareUpdater(fw_link, chunk_size=CHUNK)
    up.update(IMAGE, stop_after_chunks=4)
    boot = fw_link.info.boot_id
    fw_sim.mcu.reboot()
    wait_for(lambda: fw_link.info.boot_id != boot, what="re-HELLO after reboot")
    res = up.update(IMAGE)
    assert res.resumed_from == 4 * CHUNK and fw_sim.mcu.firmware == (1, 1, 0)


def test_wrong_signer_is_refused_before_switching(fw_link: Link, fw_sim: Simulator) -> None:
    rogue = sign_image(Ed25519PrivateKey.generate(), (1, 1, 0), IMAGE.data)
    with pytest.raises(DeviceError) as ei:
        FirmwareUpdater(fw_link, chunk_size=CHUNK).update(rogue)
    assert ei.value.code == "device_fw_bad_signature"
    assert fw_sim.mcu.firmware == (1, 0, 0) and fw_sim.mcu.staging.begin is None


def test_corrupted_chunk_is_refused_by_digest(fw_link: Link, fw_sim: Simulator) -> None:
    up = FirmwareUpdater(fw_link, chunk_size=CHUNK)
    up.update(IMAGE, stop_after_chunks=2)
    fw_sim.mcu.staging.data[5] ^= 0xFF  # flash bit rot / a chunk damaged in transit past the CRC
    with pytest.raises(DeviceError) as ei:
        up.update(IMAGE)
    assert ei.value.code == "device_fw_bad_image" and fw_sim.mcu.firmware == (1, 0, 0)


def test_rollback_is_refused(fw_link: Link) -> None:
    old = sign_image(KEY, (1, 0, 0), b"old")
    with pytest.raises(DeviceError) as ei:
        FirmwareUpdater(fw_link).update(old)
    assert ei.value.code == "device_fw_rollback"


def test_chunk_at_wrong_offset_reports_where_to_continue(fw_link: Link) -> None:
    from firmware_bridge.messages import FwBegin, u32

    fw_link.request(Cmd.FW_BEGIN, FwBegin(len(IMAGE.data), IMAGE.version, IMAGE.sha256).encode()).check("begin")
    rsp = fw_link.request(Cmd.FW_CHUNK, u32(128) + b"x" * 10)
    assert rsp.status == Status.FW_BAD_OFFSET and rsp.data == u32(0)


def test_cli_keygen_and_sign(tmp_path: Path) -> None:
    from firmware_bridge.firmware import load_public_key

    raw = tmp_path / "fw.bin"
    raw.write_bytes(b"\x00firmware" * 100)
    assert _main(["keygen", str(tmp_path / "k.pem"), str(tmp_path / "k.pub")]) == 0
    assert _main(["sign", "--key", str(tmp_path / "k.pem"), "--version", "2.0.1", str(raw), str(tmp_path / "fw.kfw")]) == 0
    img = SignedImage.from_bytes((tmp_path / "fw.kfw").read_bytes())
    assert img.version == (2, 0, 1) and img.data == raw.read_bytes()
    assert img.verify(load_public_key((tmp_path / "k.pub").read_bytes()))
