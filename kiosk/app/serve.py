"""`kiosk serve`: the kiosk application on a provisioned terminal (systemd: kiosk-app.service).

Reads the terminal identity `<data_dir>/terminal.json` and key store
`<data_dir>/keys`, talks to the centre (8710), the bank (8720) and the
firmware bridge (8730), serves the POS API and the screen on 8740, and on
start resolves any payment a crash left unfinished. With `KIOSK_FLEET_URL` (and
`KIOSK_FLEET_OPERATOR_PUB`) it also runs the fleet agent: a signed heartbeat every
minute and staged updates applied only when idle (kiosk/app/fleet_link.py,
docs/fleet.md); it stops with the app.

For tests and demos `--images` plays still images instead of a camera and
`--keys STATE=KEYS` types on the bridge's MCU simulator when a state is reached.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from kiosk.config import load
from kiosk.errors import InputError
from kiosk.app.stack import Ports, Stack


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8740)
    p.add_argument("--data-dir", type=Path, default=None, help="default: KIOSK_DATA_DIR / var")
    p.add_argument("--centre-port", type=int, default=8710)
    p.add_argument("--bank-port", type=int, default=8720)
    p.add_argument("--bridge-port", type=int, default=8730)
    p.add_argument("--camera", type=int, default=0, help="camera index (when no --images)")
    p.add_argument("--images", nargs="*", type=Path, help="simulated camera: play these images")
    p.add_argument("--keys", action="append", default=[], metavar="STATE=KEYS",
                   help="simulated patient: type KEYS on the MCU simulator when STATE is reached")


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per bridge poll is noise
    s = load()
    st = Stack(data_dir=args.data_dir or s.data_dir, settings=s,
               ports=Ports(centre=args.centre_port, bank=args.bank_port, bridge=args.bridge_port, kiosk=args.port))
    st.load_identity()
    st.clients()
    if args.images:
        from kiosk.app.adapters.camera import ImageCamera

        camera = ImageCamera()
        camera.show(args.images)
    else:
        from kiosk.vision.frames import CameraSource

        camera = CameraSource(args.camera)
    rt = st.build_kiosk(camera=camera, serve=False)
    if rt.fleet is not None:
        logging.getLogger("kiosk.app").info("fleet agent reporting to %s as %s", s.fleet_url, rt.fleet.agent.terminal_id)
    if args.keys:
        from kiosk.app.typist import Typist

        typist = Typist(st.bridge.sim)
        for spec in args.keys:
            state, sep, keys = spec.partition("=")
            if not sep or not keys:
                raise InputError("must be STATE=KEYS", field="--keys")
            typist.plan(state, keys)
        rt.listeners.append(typist.on_snapshot)
    from kiosk.app.runtime import ServerThread

    server = ServerThread(rt.app, host=args.host, port=args.port).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    st.stop()
    return 0
