from __future__ import annotations

import threading

import numpy as np
import pytest

from kiosk.app.screen import ScreenBus, ScreenState
from kiosk.errors import InputError


def test_publish_numbers_states_in_order_even_from_many_threads():
    bus = ScreenBus()
    seen: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(200):
            s = bus.publish(ScreenState(phase="matching"))
            with lock:
                seen.append(s.seq)

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(seen) == list(range(1, 801))
    assert bus.current().seq == 800


def test_update_validates_and_names_the_field():
    bus = ScreenBus()
    bus.update(phase="confirm", amounts={"medfee_sumamt": "10.00", "fund_pay_sumamt": "6.00", "acct_pay": "4.00"})
    assert bus.current().amounts.acct_pay == "4.00"
    with pytest.raises(InputError) as e:
        bus.update(amounts={"medfee_sumamt": "10.00", "acct_pay": "4.00"})
    assert e.value.field == "screen_state" and "amounts" in str(e.value)
    with pytest.raises(InputError):
        bus.update(phase="no_such_phase")
    with pytest.raises(InputError):
        bus.update(score=0.9)
    assert bus.current().phase == "confirm"  # a refused update changes nothing


def test_peripherals_change_one_light_at_a_time():
    bus = ScreenBus()
    bus.set_peripherals(printer="ok", network="ok")
    bus.set_peripherals(printer="error", printer_detail="paper_out")
    p = bus.current().peripherals
    assert (p.printer, p.printer_detail, p.network, p.keypad) == ("error", "paper_out", "ok", "unknown")


def test_the_frame_lives_only_while_the_camera_phase_lasts():
    bus = ScreenBus()
    bus.publish(ScreenState(phase="face", camera=True))
    bus.publish_frame(np.zeros((48, 64, 3), np.uint8))
    seq, f = bus.latest_frame()
    assert seq == 1 and f is not None
    bus.publish(ScreenState(phase="matching", camera=False))
    assert bus.latest_frame()[1] is None


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8), "jpeg", np.zeros(4, np.uint8)])
def test_a_frame_must_be_an_image_array(bad):
    with pytest.raises(InputError) as e:
        ScreenBus().publish_frame(bad)
    assert e.value.field == "frame"
