"""The counter session's capture against real frames: a patient leaning in (issue 18) and a dim
counter with the terminal's fill light (issue 15). Frames are made in memory from the development
images (close-ups of NUAA webcam frames; a CASIA portrait in a darkened scene) and played by the
simulated camera; the real face pipeline, the real bridge (LIGHT_SET on the simulated MCU) and the
session run as at the counter; only the remote parties are scripted (tests/app/test_session.py)."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from kiosk.app.adapters.bridge import BridgeLight
from kiosk.app.adapters.vision import LightControl, PipelineVision
from kiosk.app.flow import State
from kiosk.app.screen.feed import state_from_snapshot
from kiosk.app.screen.model import Peripherals
from kiosk.errors import DeviceError
from kiosk.vision.evaluate import image_files
from kiosk.vision.frames import read_image
from kiosk.vision.shifts import close_up

from tests.app.conftest import DATA, casia
from tests.app.test_session import FAST, rig  # noqa: F401  (the session rig fixture)

NUAA = DATA / "liveness" / "nuaa-train"


def _session(kind: str, session: str = "0001_0001_00_00_01", n: int = 6):
    return [read_image(p) for p in image_files(NUAA / kind) if p.name.startswith(session)][:n]


def _close(pipeline, frames):
    return [close_up(f, pipeline.detect(f)[0].box) for f in frames]


def _when(rig, pred, then, timeout=30.0):
    """Run `then` once a snapshot satisfies `pred` (the patient reacting to the screen)."""
    def watch():
        end = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < end:
            snaps = list(rig.snaps)
            if any(pred(s) for s in snaps[seen:]):
                then()
                return
            seen = len(snaps)
            time.sleep(0.02)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_leaning_patient_is_asked_to_step_back_then_pays(rig, pipeline):
    normal = _session("live", "0009_0009_01_00_01")  # a session the models call live as captured
    rig.cam.show_frames(_close(pipeline, normal))
    rig.typist.plan("confirm", "<enter>")
    _when(rig, lambda s: s.reason == "too_close", lambda: rig.cam.show_frames(normal))
    out = rig.run()
    assert out.status == "paid", (out, rig.reasons())
    assert "too_close" in rig.reasons() and "spoof_suspected" not in rig.reasons()
    # the screen shows the step-back prompt in both languages
    snap = next(s for s in rig.snaps if s.reason == "too_close")
    assert (snap.reason_zh, snap.reason_en) == ("请稍微后退一点", "Please step back a little.")
    screen = state_from_snapshot(snap, now=datetime.now(timezone.utc), peripherals=Peripherals())
    assert screen.phase == "face" and screen.prompt.zh == "请稍微后退一点" and screen.camera


def test_a_print_held_close_never_reaches_liveness_and_is_not_retried_forever(rig, pipeline):
    rig.cam.show_frames(_close(pipeline, _session("spoof")))
    out = rig.run(timeouts={**FAST, State.FACE_CAPTURE: 2.0})
    assert (out.status, out.reason) == ("failed", "timeout")  # the capture deadline bounds the retries
    assert set(rig.reasons()) == {"too_close", "timeout"}
    assert "liveness" not in rig.states() and rig.centre.calls == []


def test_a_print_moved_in_and_out_still_meets_the_spoof_limit(rig, pipeline):
    prints = _session("spoof")
    close = _close(pipeline, prints)
    rig.cam.show_frames([f for pair in zip(close, prints) for f in pair])  # close, normal, close, ...
    out = rig.run()
    assert (out.status, out.reason) == ("failed", "spoof_suspected")  # too_close did not reset the count
    assert rig.centre.calls == []


# ------------------------------------------------------------------ fill light before rejection
def _lit_vision(rig, pipeline, device_seal):
    rig.deps.vision = PipelineVision(pipeline, device_seal, light=BridgeLight(rig.client, rig.cam.set_fill_light))
    levels: list[int] = []
    orig = rig.cam.set_fill_light
    rig.cam.set_fill_light = lambda level: (levels.append(level), orig(level))
    rig.deps.vision.light.on_set = rig.cam.set_fill_light
    return levels


def test_dim_counter_raises_the_fill_light_before_telling_the_patient(rig, pipeline, device_seal):
    levels = _lit_vision(rig, pipeline, device_seal)
    rig.cam.ambient = 0.15  # a dim counter: the face's contrast fails the gates without the light
    rig.cam.show([casia(1, 0)])
    rig.typist.plan("confirm", "<enter>")
    out = rig.run()
    assert out.status == "paid", (out, rig.reasons())
    assert levels[0] > 0 and levels[-1] == 0  # raised, then off again after the capture
    assert max(levels) == 100 and rig.sim.mcu.fill == 0  # the bridge's LIGHT_SET reached the MCU
    quality = {"too_dark", "backlit", "blurred", "face_quality"}
    assert not quality & set(rig.reasons()), rig.reasons()  # the patient was never told to do anything


def test_without_a_fill_light_the_dim_patient_is_prompted(rig):
    rig.cam.ambient = 0.15
    rig.cam.show([casia(1, 0)])
    out = rig.run(timeouts={**FAST, State.FACE_CAPTURE: 2.0})
    assert (out.status, out.reason) == ("failed", "timeout")
    assert "blurred" in rig.reasons() and rig.centre.calls == []


class _Light:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.levels = fail, []

    def set(self, level: int) -> None:
        if self.fail:
            raise DeviceError("bridge down", code="bridge_unreachable")
        self.levels.append(level)


def test_light_steps_up_waits_for_the_camera_and_passes_through_at_full():
    light = _Light()
    c = LightControl(light, levels=(0, 50, 100), settle=1)
    assert c.absorbs("too_dark", 30)  # -> 50
    assert c.absorbs("too_dark", 35)  # settling
    assert c.absorbs("backlit", 40)  # -> 100
    assert c.absorbs("too_dark", 40)  # settling
    assert not c.absorbs("too_dark", 40)  # at full: the patient is told
    assert not c.absorbs("pose", 120)  # not the light's to fix
    c.off()
    assert light.levels == [50, 100, 0]


def test_dim_blur_is_the_lights_but_sharp_light_blur_is_the_patients():
    c = LightControl(_Light(), settle=0)
    assert not c.absorbs("blurred", 140)  # a well-lit smeared face: "please hold still"
    assert c.absorbs("blurred", 60)


def test_over_exposed_with_the_light_raised_steps_it_down():
    light = _Light()
    c = LightControl(light, settle=0)
    assert not c.absorbs("over_exposed", 250)  # light off: nothing to take back
    assert c.absorbs("too_dark", 30) and c.absorbs("over_exposed", 250)
    assert light.levels == [50, 0] and c.level == 0
    assert not c.absorbs("too_dark", 30)  # no see-saw: the patient is told instead


def test_a_bridge_that_cannot_light_leaves_the_prompt_to_the_patient():
    c = LightControl(_Light(fail=True))
    assert not c.absorbs("too_dark", 20) and not c.absorbs("too_dark", 20)
    c.off()  # nothing raised, nothing to switch off, no error


@pytest.mark.parametrize("level", [0, 50, 100])
def test_simulated_camera_brightens_with_the_fill_light(level):
    from kiosk.app.adapters.camera import ImageCamera

    cam = ImageCamera(fps=0, ambient=0.2)
    cam.show([casia(1, 0)])
    dark = cam.read().mean()
    cam.set_fill_light(level)
    lit = cam.read().mean()
    assert (lit > dark * 1.2) if level else (lit == dark)
