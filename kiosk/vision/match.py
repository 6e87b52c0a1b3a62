"""1:1 verification and 1:N gallery search with a margin rule.

Gallery storage: each L2-normalised template is quantised to int8 with its own
scale (max |x| / 127) and stored offset to uint8; 1,000,000 x 128 templates
take 128 MB plus 4 MB of scales. Search is one onnxruntime graph
(MatMulInteger u8 x s8 -> int32, times the per-row scales, TopK) on the MLAS
integer kernels: measured ~13 ms for 1M templates on one core of the dev box,
where numpy would need float32 (512 MB) for BLAS speed, and float16/int8
numpy matmul has no BLAS path (see docs/architecture.md for the figures).
Quantisation error on a cosine is below 0.005, far inside the decision margin.
"""
from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from kiosk.errors import InputError
from kiosk.vision.norm import CohortRule

DIM = 128
_K = 8  # candidates fetched; the margin rule needs the best two distinct people
_KK = {_K: np.array([_K], np.int64)}


def quantise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 rows -> (uint8 rows offset by 128, float32 scales)."""
    x = np.atleast_2d(np.asarray(x, np.float32))
    scale = np.abs(x).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8), scale


def _quantise_probe(p: np.ndarray) -> tuple[np.ndarray, float]:
    """The probe as int8 in [-63, 63]: MLAS's u8 x s8 kernels without VNNI add pairs of products in
    int16 (vpmaddubsw), which saturates for 255 x 127 x 2; 7 bits on the probe side never saturate
    (ORT's `reduce_range`). Measured before: cosines up to 0.015 low, most for faces sharing a direction."""
    p = np.asarray(p, np.float32).reshape(-1)
    scale = float(np.abs(p).max()) / 63.0 or 1.0
    q = np.clip(np.rint(p / scale), -63, 63).astype(np.int8)
    return q.reshape(-1, 1), scale


def _search_graph(dim: int) -> bytes:
    from onnx import TensorProto, helper

    g = helper.make_tensor_value_info("g", TensorProto.UINT8, ["N", dim])
    p = helper.make_tensor_value_info("p", TensorProto.INT8, [dim, 1])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1])
    vals = helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, None])
    idx = helper.make_tensor_value_info("indices", TensorProto.INT64, [1, None])
    kk = helper.make_tensor_value_info("kk", TensorProto.INT64, [1])  # an input: one graph for 1:N and cohorts
    zp = helper.make_tensor("zp", TensorProto.UINT8, [], [128])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, -1])
    nodes = [
        helper.make_node("MatMulInteger", ["g", "p", "zp"], ["dot"]),
        helper.make_node("Cast", ["dot"], ["dotf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["dotf", "s"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "shape"], ["row"]),
        helper.make_node("TopK", ["row", "kk"], ["values", "indices"], axis=-1, largest=1, sorted=1),
    ]
    graph = helper.make_graph(nodes, "gallery_search", [g, p, s, kk], [vals, idx], [zp, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@dataclass(frozen=True)
class Candidate:
    person_id: str
    score: float


class Gallery:
    """Enrolled templates of a region; append-only in memory, ids as compact bytes.

    Search runs after capture, when the camera pipeline is idle, so it uses both
    cores by default (`threads`)."""

    def __init__(self, dim: int = DIM, capacity: int = 1024, *, threads: int = 2) -> None:
        self.dim = dim
        self._q = np.empty((capacity, dim), np.uint8)
        self._s = np.empty((capacity, 1), np.float32)
        self._ids = np.empty(capacity, dtype="S24")
        self._n = 0
        self._threads = threads
        self._sess = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._n

    def _grow(self, need: int) -> None:
        cap = self._q.shape[0]
        if need <= cap:
            return
        new = max(need, cap * 2)
        for name in ("_q", "_s", "_ids"):
            old = getattr(self, name)
            arr = np.empty((new,) + old.shape[1:], old.dtype)
            arr[: self._n] = old[: self._n]
            setattr(self, name, arr)

    def add_many(self, ids: Sequence[str], templates: np.ndarray) -> None:
        t = np.atleast_2d(np.asarray(templates, np.float32))
        if t.shape[1] != self.dim or t.shape[0] != len(ids):
            raise InputError(f"templates must be (len(ids), {self.dim})", code="template_shape", field="templates")
        enc = [str(i).encode("ascii") for i in ids]
        if any(len(e) > 24 or not e for e in enc):
            raise InputError("person ids must be 1-24 ASCII characters", code="person_id_invalid", field="person_id")
        with self._lock:
            self._grow(self._n + len(enc))
            step = 8192  # quantise in chunks: no transient full-size float copy
            for i in range(0, len(enc), step):
                q, s = quantise(t[i:i + step])
                self._q[self._n + i: self._n + i + len(q)] = q
                self._s[self._n + i: self._n + i + len(q), 0] = s
            self._ids[self._n: self._n + len(enc)] = enc
            self._n += len(enc)

    def add(self, person_id: str, template: np.ndarray) -> None:
        self.add_many([person_id], np.asarray(template, np.float32).reshape(1, -1))

    def nbytes(self) -> int:
        return self._q[: self._n].nbytes + self._s[: self._n].nbytes + self._ids[: self._n].nbytes

    def _session(self):
        if self._sess is None:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = self._threads
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            so.enable_cpu_mem_arena = False  # intermediates (4 bytes x N) are freed after each search
            # no busy-waiting between searches: idle pool threads spinning after every run took
            # ~half of a core from the centre's other work (measured under scripts/load_services)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._sess = ort.InferenceSession(_search_graph(self.dim), so, providers=["CPUExecutionProvider"])
        return self._sess

    def search(self, probe: np.ndarray, *, restrict_to: Collection[str] | None = None) -> list[Candidate]:
        """Best distinct people, best first (at most a few)."""
        probe = np.asarray(probe, np.float32).reshape(-1)
        if probe.shape[0] != self.dim:
            raise InputError(f"probe must have {self.dim} values", code="template_shape", field="probe")
        n = self._n
        if n == 0:
            return []
        if restrict_to is not None:
            wanted = np.array([str(i).encode("ascii") for i in restrict_to], dtype="S24")
            rows = np.nonzero(np.isin(self._ids[:n], wanted))[0]
            deq = (self._q[rows].astype(np.float32) - 128.0) * self._s[rows]
            scores = deq @ probe
            order = np.argsort(-scores)
            return _distinct(self._ids[rows[order]], scores[order])
        pq, _ps = _quantise_probe(probe)
        if n < _K:
            deq = (self._q[:n].astype(np.float32) - 128.0) * self._s[:n]
            scores = deq @ probe
            order = np.argsort(-scores)
            return _distinct(self._ids[order], scores[order])
        _vals, idx = self._session().run(None, {"g": self._q[:n], "p": pq, "s": self._s[:n], "kk": _KK[_K]})
        rows, scores = self._rescore(idx[0], probe)
        return _distinct(self._ids[rows], scores)

    def _rescore(self, rows: np.ndarray, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows the int8 search found, scored again in float against the float probe (only the
        gallery's own rounding left), best first."""
        scores = ((self._q[rows].astype(np.float32) - 128.0) * self._s[rows]) @ probe
        order = np.argsort(-scores, kind="stable")
        return rows[order], scores[order]

    def top_scores(self, probe: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best rows (ids, cosines), best first, not merged by person: a cohort search
        (kiosk.vision.norm), same int8 graph as `search`."""
        probe = np.asarray(probe, np.float32).reshape(-1)
        if probe.shape[0] != self.dim:
            raise InputError(f"probe must have {self.dim} values", code="template_shape", field="probe")
        n = self._n
        if n <= k:
            deq = (self._q[:n].astype(np.float32) - 128.0) * self._s[:n]
            scores = deq @ probe
            order = np.argsort(-scores, kind="stable")
            return self._ids[order], scores[order]
        pq, _ps = _quantise_probe(probe)
        _vals, idx = self._session().run(None, {"g": self._q[:n], "p": pq, "s": self._s[:n],
                                                "kk": np.array([k], np.int64)})
        rows, scores = self._rescore(idx[0], probe)
        return self._ids[rows], scores


def _distinct(ids: np.ndarray, scores: np.ndarray) -> list[Candidate]:
    out: list[Candidate] = []
    seen: set[bytes] = set()
    for i, s in zip(ids, scores):
        if i in seen:
            continue
        seen.add(i)
        out.append(Candidate(i.decode("ascii"), float(s)))
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(np.asarray(a, np.float32).reshape(-1), np.asarray(b, np.float32).reshape(-1)))


@dataclass(frozen=True)
class MatchRule:
    """Raw-cosine decisions (`threshold`, `margin`) and, where the pack has them, the cohort-normalised
    ones (`cohort`, kiosk.vision.norm) that the centre applies when a region's gallery is big enough."""

    threshold: float
    margin: float
    cohort: CohortRule | None = None

    @classmethod
    def from_thresholds(cls, t: dict) -> MatchRule:
        return cls(float(t["match_cosine"]), float(t["match_margin"]), CohortRule.from_thresholds(t))

    def verify(self, probe: np.ndarray, template: np.ndarray) -> bool:
        return cosine(probe, template) >= self.threshold

    def identify(self, candidates: list[Candidate]) -> tuple[str, str | None]:
        """-> (outcome, person_id): matched / not_matched / ambiguous (ask for phone digits)."""
        return _identify(candidates, self.threshold, self.margin)

    def identify_normalised(self, candidates: list[Candidate]) -> tuple[str, str | None]:
        """The margin rule on normalised scores (candidates carry them; any order)."""
        if self.cohort is None:
            raise ValueError("no normalised thresholds in this pack")
        ranked = sorted(candidates, key=lambda c: -c.score)
        return _identify(ranked, self.cohort.threshold, self.cohort.margin)


def _identify(candidates: list[Candidate], threshold: float, margin: float) -> tuple[str, str | None]:
    if not candidates or candidates[0].score < threshold:
        return "not_matched", None
    if len(candidates) > 1 and candidates[0].score - candidates[1].score < margin:
        return "ambiguous", None
    return "matched", candidates[0].person_id
