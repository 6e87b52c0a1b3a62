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
    ev.add_argument("--every", type=int, default=1, help="liveness: every N-th image of live/ and spoof/ (sorted)")
    ev.add_argument("--limit", type=int, default=None, help="liveness: at most this many of each after --every")
    ev.add_argument("--close-up", action="store_true",
                    help="liveness: show each image as a face leaning in (cut to the face box + 15%% per side, "
                         "480 px wide; made in memory)")
    ev.set_defaults(func=_eval)

    cs = sub.add_parser("camera-shift", help="BPCER/APCER per plausible camera change (resolution, JPEG, colour "
                                             "balance, blur, noise) on DIR/live and DIR/spoof, as a table")
    cs.add_argument("--liveness", type=Path, required=True, help="DIR/live/* and DIR/spoof/*")
    cs.add_argument("--every", type=int, default=1, help="every N-th image (sorted)")
    cs.add_argument("--json", action="store_true", help="JSON rows instead of the text table")
    cs.set_defaults(func=_camera_shift)

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
    if args.every < 1 or (args.limit is not None and args.limit < 1):
        raise InputError("must be at least 1", code="invalid_argument", field="every" if args.every < 1 else "limit")
    pipe = _pipeline(args.detector)
    result = run_eval(pipe, args.identities, args.liveness, report=args.report,
                      max_impostors=args.max_impostors, seed=args.seed, cohort=args.cohort,
                      live_transform=_close_up(pipe) if args.close_up else None, every=args.every, limit=args.limit)
    # stdout is exactly the structure; the extras (report paths, images without a face) go to stderr
    report = result.pop("report", None)
    liv = result.get("liveness") or {}
    no_face = {k: liv.pop(k) for k in ("live_no_face", "spoof_no_face") if k in liv}
    refused = {k: liv.pop(k) for k in ("live_quality", "spoof_quality") if k in liv}
    print(json.dumps(result, indent=2))
    if no_face:
        print(f"liveness images without a face (counted as rejected): {json.dumps(no_face)}", file=sys.stderr)
    if any(refused.values()):
        print(f"liveness images refused by a quality gate before liveness (not in APCER/BPCER): "
              f"{json.dumps(refused)}", file=sys.stderr)
    if report:
        print(f"report: {', '.join(report)}", file=sys.stderr)
    return 0


def _close_up(pipe):
    from kiosk.vision.shifts import close_up

    def transform(img):
        faces = pipe.detect(img)
        return close_up(img, faces[0].box) if faces else img

    return transform


def _camera_shift(args: argparse.Namespace) -> int:
    from kiosk.errors import InputError
    from kiosk.vision.evaluate import liveness_eval
    from kiosk.vision.shifts import CAMERA_SHIFTS

    if args.every < 1:
        raise InputError("must be at least 1", code="invalid_argument", field="every")
    pipe = _pipeline()
    rows = []
    for name, shift in CAMERA_SHIFTS.items():
        m, _, _ = liveness_eval(pipe, args.liveness, transform=shift, every=args.every)
        rows.append({"camera": name, "bpcer": m["bpcer"], "apcer": m["apcer"], "live": m["live"],
                     "spoof": m["spoof"], "live_no_face": m["live_no_face"],
                     "refused": sum(m["live_quality"].values()) + sum(m["spoof_quality"].values())})
    if args.json:
        print(json.dumps({"threshold": float(pipe.pack.thresholds["liveness_live"]), "rows": rows}, indent=2))
        return 0
    base = rows[0]["bpcer"] or 0.0
    print(f"liveness at the shipped threshold {pipe.pack.thresholds['liveness_live']}, per frame "
          f"({rows[0]['live']} live / {rows[0]['spoof']} spoof images)")
    print(f"{'camera change':<40} {'BPCER':>7} {'APCER':>7} {'no face':>8}")
    for r in rows:
        flag = "  <- weak spot" if r["bpcer"] is not None and r["bpcer"] >= max(2 * base, base + 0.05) else ""
        pct = (lambda v: "   n/a" if v is None else f"{100 * v:6.1f}%")
        print(f"{r['camera']:<40} {pct(r['bpcer'])} {pct(r['apcer'])} {r['live_no_face']:>8}{flag}")
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
