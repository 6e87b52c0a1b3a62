"""`kiosk face ...`: evaluation, a quick check of frames, and pack verification.

Only outcomes, reasons and aggregate metrics are printed; no per-image score,
no image, crop or template.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    face = subparsers.add_parser("face", help="face pipeline: evaluate, check frames, verify the model pack")
    sub = face.add_subparsers(dest="face_command", metavar="SUBCOMMAND")
    sub.required = True

    ev = sub.add_parser("eval", help="FAR/FRR/TAR/EER (cohort-normalised as the centre decides, and raw) and "
                        "APCER/BPCER at the shipped thresholds")
    ev.add_argument("--identities", type=Path, help="DIR/<person>/<image>")
    ev.add_argument("--liveness", type=Path, help="DIR/live/* and DIR/spoof/*")
    ev.add_argument("--cohort", type=Path, help="DIR/<person>/<image>: the cohort for normalised scores (first "
                    "image of each person); default: the evaluated people, each pair's own left out")
    ev.add_argument("--json", action="store_true", help="print JSON (the default output)")
    ev.add_argument("--report", type=Path, help="also write DET curve and score histograms (PNG) here")
    ev.add_argument("--max-impostors", type=int, default=2_000_000,
                    help="above this many cross pairs, sample this many (at least 100,000), seeded")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--detector", choices=("yunet", "scrfd"), default=None)
    ev.set_defaults(func=_eval)

    ck = sub.add_parser("check", help="run the Decision API's capture on frames and print the outcome")
    ck.add_argument("source", help="camera index, video file, image file or folder of images")
    ck.add_argument("--frames", type=int, default=10)
    ck.set_defaults(func=_check)

    vp = sub.add_parser("verify-pack", help="check every model file against the manifest sha256")
    vp.add_argument("--pack", type=Path, default=None)
    vp.set_defaults(func=_verify_pack)


def _pipeline(detector: str | None = None):
    from kiosk.vision.pipeline import FacePipeline

    return FacePipeline.from_settings(**({"detector": detector} if detector else {}))


def _eval(args: argparse.Namespace) -> int:
    from kiosk.errors import InputError
    from kiosk.vision.evaluate import run_eval

    if args.identities is None and args.liveness is None:
        raise InputError("give --identities DIR and/or --liveness DIR", code="missing_argument", field="identities")
    if args.max_impostors < 100_000:
        raise InputError("must be at least 100000", code="invalid_argument", field="max-impostors")
    result = run_eval(_pipeline(args.detector), args.identities, args.liveness, report=args.report,
                      max_impostors=args.max_impostors, seed=args.seed, cohort=args.cohort)
    # stdout is exactly the structure; the extras (report paths, images without a face) go to stderr
    report = result.pop("report", None)
    liv = result.get("liveness") or {}
    no_face = {k: liv.pop(k) for k in ("live_no_face", "spoof_no_face") if k in liv}
    print(json.dumps(result, indent=2))
    if no_face:
        print(f"liveness images without a face (counted as rejected): {json.dumps(no_face)}", file=sys.stderr)
    if report:
        print(f"report: {', '.join(report)}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from kiosk.vision.frames import frames, open_source

    pipe = _pipeline()
    src = open_source(args.source, loop=True)  # a still image or folder plays like a camera
    try:
        probe = pipe.probe_template(frames(src, args.frames))
    finally:
        src.close()
    from kiosk.vision.pipeline import _refusal

    outcome = "captured" if probe.ok else _refusal(probe.reason).outcome
    print(json.dumps({"outcome": outcome, "reason": probe.reason}))
    return 0


def _verify_pack(args: argparse.Namespace) -> int:
    from models.loader import load_pack

    pack = load_pack(args.pack)
    print(json.dumps({"pack": str(pack.root), "verified": pack.verify_all(), "providers": pack.providers}))
    return 0
