"""Look at the patient's screen without a counter session:
`python -m kiosk.app.screen [--port 8741] [--seconds-per-state 4]` serves the
page and cycles through the sample states, with a moving test pattern (or the
shared demo faces) as the camera preview."""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np


def _frames(stop: threading.Event, bus) -> None:  # type: ignore[no-untyped-def]
    from kiosk.config import load

    faces = sorted(p for p in (load().demo_faces / "misc").glob("*.jpg"))
    import cv2

    imgs = [im for im in (cv2.imread(str(p)) for p in faces[:5]) if im is not None]
    i = 0
    while not stop.wait(1 / 15):
        if imgs:
            bus.publish_frame(imgs[(i // 30) % len(imgs)])
        else:
            f = np.zeros((480, 640, 3), np.uint8)
            f[:, (i * 8) % 640:(i * 8) % 640 + 40] = 200
            bus.publish_frame(f)
        i += 1


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m kiosk.app.screen")
    ap.add_argument("--port", type=int, default=8741)
    ap.add_argument("--seconds-per-state", type=float, default=4.0)
    a = ap.parse_args()
    import uvicorn
    from fastapi import FastAPI

    from kiosk.app.screen import ScreenBus, mount_screen
    from kiosk.app.screen.samples import samples

    app, bus = FastAPI(), ScreenBus()
    token = mount_screen(app, bus, technician=False)
    stop = threading.Event()

    def cycle() -> None:
        while not stop.is_set():
            for st in samples().values():
                bus.publish(st)
                if stop.wait(a.seconds_per_state):
                    return

    threading.Thread(target=cycle, daemon=True).start()
    threading.Thread(target=_frames, args=(stop, bus), daemon=True).start()
    # the data paths answer only with this run's secret: it rides in the fragment (never sent to the server)
    print(f"screen: http://127.0.0.1:{a.port}/screen/#k={token}", flush=True)
    try:
        uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", timeout_graceful_shutdown=1)
    finally:
        stop.set()
        bus.close()
        time.sleep(0.1)


if __name__ == "__main__":
    main()
