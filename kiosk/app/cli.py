"""Sub-commands of the kiosk application.

    kiosk demo [--serve]          the whole system on one machine + a scripted counter session
    kiosk serve                   the kiosk app on a provisioned terminal (POS API + screen, 8740)
    kiosk pos-key add SYSTEM      create the API key of an integrating POS/HIS system
    kiosk provision ...           (G2) technician provisioning
"""
from __future__ import annotations

import argparse

from kiosk.config import load


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = sub.add_parser("demo", help="start the local services, the bridge simulator and the kiosk; run a scripted "
                                    "counter session; last stdout line is the result JSON")
    d.add_argument("--serve", action="store_true", help="stay up afterwards for a person to use in a browser")
    d.add_argument("--keep", action="store_true", help="keep var/demo from the last run (default: start fresh)")
    d.add_argument("--port", type=int, default=8740, help="kiosk app port (POS API + screen)")
    d.set_defaults(func=_demo)

    sv = sub.add_parser("serve", help="run the kiosk app (POS API + screen) on a provisioned terminal")
    from kiosk.app.serve import add_arguments

    add_arguments(sv)
    sv.set_defaults(func=_serve)

    k = sub.add_parser("pos-key", help="API keys of the POS/HIS systems allowed to send orders")
    ks = k.add_subparsers(dest="action", metavar="ACTION")
    ks.required = True
    a = ks.add_parser("add", help="create (or show) the key of SYSTEM; prints it once on stdout")
    a.add_argument("system")
    a.set_defaults(func=_pos_key_add)

    try:
        from kiosk.app.provision import register_provision
    except ImportError:
        return
    register_provision(sub)


def _demo(args: argparse.Namespace) -> int:
    from kiosk.app.demo import run_demo

    return run_demo(serve=args.serve, fresh=not args.keep, port=args.port)


def _serve(args: argparse.Namespace) -> int:
    from kiosk.app.serve import serve

    return serve(args)


def _pos_key_add(args: argparse.Namespace) -> int:
    import re

    from kiosk.app.pos_auth import add_system
    from kiosk.errors import InputError

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.system):
        raise InputError("1-64 letters, digits, '_', '.', '-'", field="system")
    print(add_system(load().data_dir, args.system))
    return 0
