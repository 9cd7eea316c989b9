"""The paper's evaluation protocol on a data set in MVTec layout (Gutierrez et al. 2021, sec. 4).

For each augmentation factor and training size N, M replicates draw N good training images without
replacement (fixed seeds), fit every detector exactly as the camera does (`fitting.fit_features`, threshold
included), and score the whole test split: image-level AUROC, and the false-reject and detection rates at
the label-free threshold. Embeddings (originals and augmented copies) are cached on disk per model and
image, so a rerun only refits detectors.

Deviation from the camera's fit, on purpose: each training image's copies are drawn from a seed derived from
that image's index, so the same copies serve every N and replicate and can be cached.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from edge_agent.capture.images import read_image
from edge_agent.embed.features import FeatureExtractor
from edge_agent.learn.augment import AugmentationPolicy, augment
from edge_agent.learn.detectors import Detector, make_detector
from edge_agent.learn.fitting import FitError, FitResult, FitSettings, check_fold_sizes, fit_features, seen_pose
from edge_agent.embed.manifest import Features
from edge_agent.learn.pseudo_defects import DEFECTS_PER_IMAGE, pseudo_defects
from edge_agent.learn.threshold import is_anomalous
from edge_agent.learn import upright as upright_module
from edge_agent.learn.upright import Upright
from edge_agent.offline.datasets import MVTecSet, load_mvtec
from edge_agent.offline.metrics import area_under_auc_percent, roc_auc

log = logging.getLogger(__name__)


#: Turned images' cache keys carry the turning code's own hash: an edit to how parts are found and turned must not
#: reuse embeddings of windows the old code cut (it once did, and a screw figure was 0.02 off).
_UPRIGHT_CODE = hashlib.sha1(Path(upright_module.__file__).read_bytes()).hexdigest()[:12]


class EmbeddingCache:
    """Features per (model, key) in ``.npz`` files: cheap to reuse, safe to delete."""

    def __init__(self, root: Path, model_id: str) -> None:
        self.dir = root / model_id.replace("@", "-")
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.dir / f"{hashlib.sha1(key.encode()).hexdigest()}.npz"

    def get(self, key: str) -> Features | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {name.replace("__", "/"): z[name] for name in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # cut short by an interrupted run: recompute
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, features: Features) -> None:
        tmp = self._path(key).with_suffix(".tmp.npz")
        np.savez(tmp, **{name.replace("/", "__"): v for name, v in features.items()})
        tmp.replace(self._path(key))


@dataclass
class EvalSettings:
    sizes: Sequence[int | str] = (5, 10, 20, 50, "max")
    replicates: int = 5
    factors: Sequence[int] = (0, 10)
    detectors: Sequence[str] = ("mahalanobis", "mahalanobis-empirical", "knn", "padim", "patch-knn", "combined")
    policy: AugmentationPolicy = field(default_factory=AugmentationPolicy)
    seed: int = 0
    fit: FitSettings = field(default_factory=FitSettings)


class _Embedder:
    """Embeds data set images through the cache, with progress in the log."""

    def __init__(self, extractor: FeatureExtractor, cache: EmbeddingCache, policy: AugmentationPolicy, seed: int,
                 upright: Upright | None = None):
        self.extractor, self.cache, self.policy, self.seed, self.upright = extractor, cache, policy, seed, upright
        self._policy_key = json.dumps(policy.to_dict(), sort_keys=True)
        window = "" if upright is None else json.dumps(upright.to_metadata(), sort_keys=True)
        self._view = "" if upright is None else f"upright {_UPRIGHT_CODE} {window}|"

    def turned(self, upright: Upright) -> _Embedder:
        """The same embedder for images turned upright into ``upright``'s window first (their own cache keys)."""
        return _Embedder(self.extractor, self.cache, self.policy, self.seed, upright)

    def _read(self, path: Path) -> np.ndarray:
        image = read_image(path)
        return image if self.upright is None else self.upright.apply(image).image

    def originals(self, paths: list[Path], what: str) -> Features:
        rows = []
        for i, path in enumerate(paths, 1):
            key = f"{self._view}orig|{path.resolve()}|{path.stat().st_mtime_ns}"
            feats = self.cache.get(key)
            if feats is None:
                feats = self.extractor.embed([self._read(path)])
                self.cache.put(key, feats)
            rows.append(feats)
            if i % max(1, len(paths) // 5) == 0 or i == len(paths):
                log.info("%s: %d/%d images embedded", what, i, len(paths))
        return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}

    def _per_image(self, paths: list[Path], key: str, make: Callable[[np.ndarray, int], list[np.ndarray]],
                   what: str, needed: set[int] | None) -> list[Features | None]:
        """Features of the images ``make(image, seed)`` derives from each path, seeded by its list position.

        Only the positions in ``needed`` (all when None) are embedded; the others are None. The seed and cache
        key depend on the position alone, so a run that draws more images reuses what a smaller one embedded.
        """
        todo = range(len(paths)) if needed is None else sorted(needed)
        out: list[Features | None] = [None] * len(paths)
        for done, i in enumerate(todo, 1):
            path = paths[i]
            full_key = f"{self._view}{key}|{self.seed + i}|{path.resolve()}|{path.stat().st_mtime_ns}"
            feats = self.cache.get(full_key)
            if feats is None:
                feats = self.extractor.embed(make(self._read(path), self.seed + i))
                self.cache.put(full_key, feats)
            out[i] = feats
            if done % max(1, len(todo) // 5) == 0 or done == len(todo):
                log.info("%s: %d/%d training images embedded", what, done, len(todo))
        return out

    def copies(self, paths: list[Path], factor: int, needed: set[int] | None = None) -> list[Features | None]:
        """``factor`` augmented copies of each image (of the ``needed`` ones)."""
        return self._per_image(paths, f"aug|{self._policy_key}|{factor}",
                               lambda img, seed: augment([img], self.policy, factor, seed)[1:], f"augmented x{factor}",
                               needed)

    def defects(self, paths: list[Path], needed: set[int] | None = None) -> list[Features | None]:
        """`DEFECTS_PER_IMAGE` damaged copies of each image (of the ``needed`` ones), for detectors weighted by them."""
        return self._per_image(paths, f"defects|{DEFECTS_PER_IMAGE}",
                               lambda img, seed: pseudo_defects([img], DEFECTS_PER_IMAGE, seed), "damaged copies",
                               needed)


def parse_detector_spec(spec: str) -> tuple[str, dict]:
    """``"patch-knn:coreset_ratio=1.0,seed=3"`` -> ("patch-knn", {"coreset_ratio": 1.0, "seed": 3}).

    Lets one evaluation compare settings of the same detector (e.g. exact search against a coreset).
    """
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"detector parameter {item!r} in {spec!r} must be key=value")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    make_detector(name, **params)  # fails early, naming the detector or parameter
    return name, params


def _detector(spec: str) -> Detector:
    name, params = parse_detector_spec(spec)
    return make_detector(name, **params)


def _reads_spatial(spec: str) -> bool:
    detector = _detector(spec)
    parts = [make_detector(p) for p in getattr(detector, "parts", ())] or [detector]
    return any(p.level_prefix == "spatial/" for p in parts)


def _resolve_sizes(sizes: Sequence[int | str], n_max: int, factor: int, max_folds: int | None) -> list[int]:
    out = []
    for s in sizes:
        n = n_max if s == "max" else int(s)
        if n > n_max:
            log.warning("N=%d is more than the %d training images: skipped", n, n_max)
            continue
        try:
            check_fold_sizes(n, factor, max_folds)
        except FitError as exc:
            log.warning("N=%d skipped for factor %d: %s", n, factor, exc)
            continue
        if n not in out:
            out.append(n)
    return sorted(out)


def _draw(seed: int, n: int, rep: int, n_max: int) -> np.ndarray:
    """The sorted indices of replicate ``rep``'s N training images (the same for every factor and detector)."""
    return np.sort(np.random.default_rng([seed, n, rep]).choice(n_max, size=n, replace=False))


@dataclass
class ReplicateFit:
    """One detector fitted on one replicate's draw, and its scores on the whole test split."""

    factor: int
    n: int
    replicate: int
    detector: str
    result: FitResult
    test_scores: np.ndarray
    fit_s: float


class _View:
    """What the fits of one view of a set (as captured, or turned upright into one window) share: the test
    split's features, and the originals and damaged copies of the training images some fit in this view draws,
    with the copies of each factor only of the images its own fits draw (``drawn``: factor -> training indices)."""

    def __init__(self, embedder: _Embedder, dataset: MVTecSet, drawn: Mapping[int, set[int]], damage: bool) -> None:
        self.test = embedder.originals(dataset.test, "test split")
        every = set().union(*drawn.values())
        self._drawn = sorted(every)
        self._train = embedder.originals([dataset.train[i] for i in self._drawn], "drawn training images")
        self.copies = {f: embedder.copies(dataset.train, f, idx) if f > 0 else None for f, idx in drawn.items()}
        self.damaged = embedder.defects(dataset.train, every) if damage else None

    def train_features(self, idx: np.ndarray, factor: int) -> Features:
        """Originals then each one's copies: the layout `augment` produces and the threshold relies on."""
        rows = np.searchsorted(self._drawn, idx)
        copies = self.copies[factor]
        if copies is None:
            return {k: v[rows] for k, v in self._train.items()}
        return {k: np.concatenate([v[rows]] + [copies[i][k] for i in idx]) for k, v in self._train.items()}


def replicate_fits(dataset: MVTecSet, extractor: FeatureExtractor, cache_dir: Path,
                   settings: EvalSettings) -> Iterator[ReplicateFit]:
    """Every (factor, N, replicate, detector) fit of the protocol, fitted exactly as the camera fits: the good
    parts turned upright first when they lie at any angle (`fitting.seen_pose`), then `fitting.fit_features`."""
    embedder = _Embedder(extractor, EmbeddingCache(cache_dir, extractor.manifest.model_id), settings.policy, settings.seed)
    n_max = len(dataset.train)
    draws = {factor: [(n, rep, _draw(settings.seed, n, rep, n_max))
                      for n in _resolve_sizes(settings.sizes, n_max, factor, settings.fit.max_folds)
                      for rep in range(1 if n == n_max else settings.replicates)] for factor in settings.factors}
    first = embedder.originals(dataset.test[:1], "a first test image")
    has_spatial = any(k.startswith("spatial/") for k in first)
    detectors = [d for d in settings.detectors if has_spatial or not _reads_spatial(d)]
    if len(detectors) < len(settings.detectors):
        log.warning("model %s has no spatial outputs: %s skipped", extractor.manifest.model_id,
                    ", ".join(sorted(set(settings.detectors) - set(detectors))))
    damage = any(_detector(d).needs_defects for d in detectors)
    # Each draw's view: as captured, or its own upright window. Copies and damaged copies only of the training
    # images some fit in that view draws (50 of 320 at N=10, 5 replicates).
    plan = {}
    for factor, fits in draws.items():
        for n, rep, idx in fits:
            _, upright, pose = seen_pose([read_image(dataset.train[i]) for i in idx], settings.fit.upright)
            plan[(factor, n, rep)] = (idx, upright, pose["aligned"])
    views: dict[Upright | None, _View] = {}
    for upright in dict.fromkeys(u for _, u, _ in plan.values()):
        drawn: dict[int, set[int]] = {factor: set() for factor in settings.factors}
        for (factor, _, _), (idx, u, _) in plan.items():
            if u == upright:
                drawn[factor].update(int(i) for i in idx)
        views[upright] = _View(embedder if upright is None else embedder.turned(upright), dataset, drawn, damage)
    for (factor, n, rep), (idx, upright, aligned) in plan.items():
        view = views[upright]
        feats = view.train_features(idx, factor)
        for name in detectors:
            det, params = parse_detector_spec(name)
            fit = replace(settings.fit, detector=det, detector_params=params, factor=factor, policy=settings.policy)
            t0 = time.perf_counter()
            defects = [view.damaged[i] for i in idx] if _detector(name).needs_defects else None
            result = fit_features(feats, n, fit, defects, aligned)
            fit_s = round(time.perf_counter() - t0, 3)
            yield ReplicateFit(factor, n, rep, name, result, result.detector.score_samples(view.test), fit_s)


def run_protocol(dataset: MVTecSet, extractor: FeatureExtractor, cache_dir: Path, settings: EvalSettings) -> list[dict]:
    """One row per (factor, N, replicate, detector) with AUROC, threshold, false-reject and detection rates."""
    good, bad = dataset.test_labels == 0, dataset.test_labels == 1
    rows = []
    for fit in replicate_fits(dataset, extractor, cache_dir, settings):
        flagged = is_anomalous(fit.test_scores, fit.result.threshold)
        rows.append({
            "dataset": dataset.name, "model": extractor.manifest.model_id, "detector": fit.detector,
            "factor": fit.factor, "n": fit.n, "replicate": fit.replicate,
            "auroc": roc_auc(dataset.test_labels, fit.test_scores), "threshold": fit.result.threshold,
            "false_reject_rate": float(np.mean(flagged[good])), "detection_rate": float(np.mean(flagged[bad])),
            "fit_s": fit.fit_s,
        })
        log.info("factor %d, N=%d, replicate %d: %s %.3f", fit.factor, fit.n, fit.replicate, fit.detector,
                 rows[-1]["auroc"])
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and std over replicates per (detector, factor, N), plus each curve's area under AUC-percent."""
    keys = sorted({(r["detector"], r["factor"]) for r in rows})
    n_max = max(r["n"] for r in rows)
    out = []
    for det, factor in keys:
        curve = []
        for n in sorted({r["n"] for r in rows if (r["detector"], r["factor"]) == (det, factor)}):
            sel = [r for r in rows if (r["detector"], r["factor"], r["n"]) == (det, factor, n)]
            au = np.array([r["auroc"] for r in sel])
            curve.append({
                "detector": det, "factor": factor, "n": n, "replicates": len(sel),
                "auroc_mean": float(au.mean()), "auroc_std": float(au.std()),
                "false_reject_rate": float(np.mean([r["false_reject_rate"] for r in sel])),
                "detection_rate": float(np.mean([r["detection_rate"] for r in sel])),
            })
        area = area_under_auc_percent(np.array([c["n"] for c in curve]) / n_max * 100, np.array([c["auroc_mean"] for c in curve]))
        for c in curve:
            c["area_auc_percent"] = area
        out += curve
    return out


def markdown_table(summary: list[dict], title: str) -> str:
    sizes = sorted({s["n"] for s in summary})
    lines = [f"### {title}", "",
             "| detector | factor | " + " | ".join(f"N={n}" for n in sizes)
             + f" | area AUC-% | FRR @thr (N={sizes[-1]}) | DR @thr (N={sizes[-1]}) |",
             "|---|---|" + "---|" * (len(sizes) + 3)]
    for det, factor in sorted({(s["detector"], s["factor"]) for s in summary}):
        cells = {s["n"]: s for s in summary if (s["detector"], s["factor"]) == (det, factor)}
        last = cells[max(cells)]
        lines.append(f"| {det} | {factor} | " + " | ".join(
            f"{cells[n]['auroc_mean']:.3f} ± {cells[n]['auroc_std']:.3f}" if n in cells else "" for n in sizes)
            + f" | {last['area_auc_percent']:.3f} | {last['false_reject_rate']:.2f} | {last['detection_rate']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: Path, title: str) -> bool:
    """AUROC against N, one line per detector and factor; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'edge-inspect[eval]'): no plot written")
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for det, factor in sorted({(s["detector"], s["factor"]) for s in summary}):
        c = sorted((s for s in summary if (s["detector"], s["factor"]) == (det, factor)), key=lambda s: s["n"])
        ax.errorbar([s["n"] for s in c], [s["auroc_mean"] for s in c], yerr=[s["auroc_std"] for s in c],
                    marker="o", capsize=3, linestyle="-" if factor else "--", label=f"{det}, x{factor}")
    ax.set_xscale("log")
    ax.set_xlabel("good training images N")
    ax.set_ylabel("image AUROC")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def evaluate(data: Path, extractor: FeatureExtractor, out_dir: Path, cache_dir: Path, settings: EvalSettings) -> list[dict]:
    """Run the protocol and write ``results.csv``, ``summary.csv``, ``summary.md`` and ``auroc_vs_n.png``."""
    dataset = load_mvtec(data)
    rows = run_protocol(dataset, extractor, cache_dir, settings)
    summary = summarise(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, table in (("results.csv", rows), ("summary.csv", summary)):
        with open(out_dir / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    title = f"{dataset.name} - {extractor.manifest.model_id}"
    (out_dir / "summary.md").write_text(markdown_table(summary, title))
    plot(summary, out_dir / "auroc_vs_n.png", title)
    return summary
