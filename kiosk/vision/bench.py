"""Face pipeline benchmark: per-stage p50/p95 and the ratio to insightface's FaceAnalysis-style baseline.

Run by scripts/bench_face. Frames are NUAA live frames (640x480) from
../shared/data, decoded from their JPEG bytes each time (the decode stage).
The baseline is what `insightface.app.FaceAnalysis` runs: SCRFD det_500m at
640x640 plus the same MobileFaceNet through insightface's model_zoo, loaded
from the shared files (no downloads), with onnxruntime's default threading.
1:N search uses random unit templates (10k/100k/1M); resident memory is read
from /proc/self/statm before and after building the 1M gallery.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

import numpy as np

from kiosk.config import SHARED
from kiosk.vision.embed import l2_normalise
from kiosk.vision.match import Gallery
from kiosk.vision.pipeline import FacePipeline
from kiosk.vision.quality import assess


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after large temporaries)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def pct(v: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(v, 50)), 3), "p95": round(float(np.percentile(v, 95)), 3), "n": len(v)}


def frame_bytes(n: int) -> list[bytes]:
    files = sorted((SHARED / "data" / "liveness" / "nuaa-train" / "live").glob("*.jpg"))
    step = max(1, len(files) // n)
    return [p.read_bytes() for p in files[::step][:n]]


def bench_pipeline(pipe: FacePipeline, blobs: list[bytes], reps: int) -> tuple[dict, list[tuple]]:
    import cv2

    st: dict[str, list[float]] = {k: [] for k in ("decode", "detect", "quality", "liveness", "align_embed",
                                                  "per_frame_total", "detect+embed")}
    faces_seen = []
    for _ in range(reps):
        for b in blobs:
            t0 = time.perf_counter()
            img = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
            t1 = time.perf_counter()
            faces = pipe.detector.detect(img)
            t2 = time.perf_counter()
            q = assess(img, faces, pipe.quality_cfg)
            t3 = time.perf_counter()
            if not faces:
                continue
            face = faces[0]
            pipe.liveness.score(img, face)
            t4 = time.perf_counter()
            pipe.embedder.embed(img, face)
            t5 = time.perf_counter()
            st["decode"].append((t1 - t0) * 1e3)
            st["detect"].append((t2 - t1) * 1e3)
            st["quality"].append((t3 - t2) * 1e3)
            st["liveness"].append((t4 - t3) * 1e3)
            st["align_embed"].append((t5 - t4) * 1e3)
            st["per_frame_total"].append((t5 - t1) * 1e3)
            st["detect+embed"].append(((t2 - t1) + (t5 - t4)) * 1e3)
            faces_seen.append(q.reason)
    return {k: pct(v) for k, v in st.items() if v}, faces_seen


def bench_baseline(blobs: list[bytes], reps: int) -> dict:
    """insightface FaceAnalysis' path: SCRFD-500M at 640x640 + ArcFaceONNX(MobileFaceNet)."""
    import cv2
    from insightface.model_zoo import model_zoo

    from models.loader import load_pack

    pack = load_pack()
    pack.read("detector_scrfd")
    pack.read("recognizer")
    det = model_zoo.get_model(str(pack.path("detector_scrfd")), providers=["CPUExecutionProvider"])
    det.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    rec = model_zoo.get_model(str(pack.path("recognizer")), providers=["CPUExecutionProvider"])
    rec.prepare(-1)
    st: dict[str, list[float]] = {"detect": [], "align_embed": [], "detect+embed": []}
    for _ in range(reps):
        for b in blobs:
            img = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
            t1 = time.perf_counter()
            bboxes, kpss = det.detect(img, max_num=0, metric="default")
            t2 = time.perf_counter()
            if bboxes.shape[0] == 0:
                continue

            class _F:  # the attributes insightface's Face carries for recognition
                kps = kpss[0]

            rec.get(img, _F())
            t3 = time.perf_counter()
            st["detect"].append((t2 - t1) * 1e3)
            st["align_embed"].append((t3 - t2) * 1e3)
            st["detect+embed"].append((t3 - t1) * 1e3)
    return {k: pct(v) for k, v in st.items() if v}


def bench_search(sizes: list[int], reps: int, threads: int, numpy_compare: int) -> dict:
    rng = np.random.default_rng(0)
    out: dict = {}
    probes = l2_normalise(rng.standard_normal((reps, 128)))
    for n in sizes:
        gc.collect()
        trim_heap()
        before = rss_mb()
        g = Gallery(capacity=n, threads=threads)
        for i in range(0, n, 8192):
            m = min(8192, n - i)
            g.add_many([f"P{j}" for j in range(i, i + m)], l2_normalise(rng.standard_normal((m, 128))))
        g.search(probes[0])  # build the search graph
        ts = []
        for p in probes:
            t0 = time.perf_counter()
            g.search(p)
            ts.append((time.perf_counter() - t0) * 1e3)
        gc.collect()
        trim_heap()
        after = rss_mb()
        out[f"search_{n // 1000}k"] = {**pct(ts), "gallery_bytes_mb": round(g.nbytes() / 2**20, 1),
                                       "rss_delta_mb": round(after - before, 1), "rss_total_mb": round(after, 1)}
        del g
        gc.collect()
    if numpy_compare:
        n = numpy_compare
        x = l2_normalise(rng.standard_normal((n, 128)))
        ts = []
        for p in probes:
            t0 = time.perf_counter()
            s = x @ p
            np.argpartition(-s, 8)[:8]
            ts.append((time.perf_counter() - t0) * 1e3)
        out[f"numpy_float32_search_{n // 1000}k"] = {**pct(ts), "gallery_bytes_mb": round(x.nbytes / 2**20, 1)}
    return out


def table(rows: dict[str, dict]) -> str:
    lines = [f"{'stage':<28}{'p50 ms':>10}{'p95 ms':>10}  extra"]
    for k, v in rows.items():
        extra = " ".join(f"{kk}={vv}" for kk, vv in v.items() if kk not in ("p50", "p95"))
        lines.append(f"{k:<28}{v['p50']:>10.3f}{v['p95']:>10.3f}  {extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_face", description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--search-reps", type=int, default=50)
    ap.add_argument("--search-threads", type=int, default=2)
    ap.add_argument("--numpy-compare", type=int, default=100_000, help="numpy float32 search size for comparison")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    pipe = FacePipeline.from_settings()
    blobs = frame_bytes(args.frames)
    bench_pipeline(pipe, blobs[:5], 1)  # warm-up
    ours, _ = bench_pipeline(pipe, blobs, args.reps)
    result = {"ours": ours, "threads": pipe.pack.intra_op_threads, "cpus": os.cpu_count()}
    print(f"# face pipeline, {len(blobs)} frames 640x480 x{args.reps}, onnxruntime intra_op_threads="
          f"{pipe.pack.intra_op_threads}, {os.cpu_count()} CPUs")
    print(table(ours))
    if not args.no_baseline:
        bench_baseline(blobs[:5], 1)
        base = bench_baseline(blobs, args.reps)
        result["baseline"] = base
        ratio = {k: round(base[k]["p50"] / ours[k]["p50"], 2) for k in ("detect", "align_embed", "detect+embed")}
        ratio_p95 = round(base["detect+embed"]["p95"] / ours["detect+embed"]["p95"], 2)
        result["speedup_vs_faceanalysis_p50"] = ratio
        result["speedup_vs_faceanalysis_p95_detect+embed"] = ratio_p95
        print("\n# insightface FaceAnalysis-style baseline (SCRFD det_500m 640x640 + same recognizer)")
        print(table(base))
        print(f"\nspeed-up vs baseline (p50): {ratio}  detect+embed p95: {ratio_p95}x")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    search = bench_search(sizes, args.search_reps, args.search_threads, args.numpy_compare)
    result["search"] = search
    print(f"\n# 1:N search (int8 gallery, onnxruntime MatMulInteger+TopK, threads={args.search_threads})")
    print(table(search))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
