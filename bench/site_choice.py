"""The combined detector's weighting, and label-free rules for it, on the shared sets (issue 14, items 2-3).

A prototype OUTSIDE edge_agent/learn/detectors: it refits the combined detector's two parts (the pooled
Ledoit-Wolf Gaussian and the patch memory) exactly as `CombinedDetector.fit` does (out-of-fold scores of each
good original and of its damaged copies, with the same folds; loc/scale of the log out-of-fold distances), and
also scores each held-out image's augmented copies. Every part's test scores are kept as z (standard deviations
above the good images), so any weighting w of the parts, sum_j w_j z_j, ranks the test images exactly as the
combined detector with those weights would (its score is a monotone function of that sum).

    python -m bench.site_choice --out build/site_choice bottle=../data/mvtec_ad_bottle:bottle ...

Each argument is NAME=FOLDER:PRESET (a preset name from edge_agent.learn.augment.PRESETS, or one of EXTRA
below). Raw z per replicate go to OUT/NAME-PRESET.npz (reused when present); `analyse` prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from functools import partial
from pathlib import Path

import numpy as np

from edge_agent.capture.images import read_image
from edge_agent.embed.features import FeatureExtractor
from edge_agent.learn.alignment import is_aligned, orientation_alignment
from edge_agent.learn.augment import PRESETS, AugmentationPolicy, group_indices
from edge_agent.learn.detectors import make_detector
from edge_agent.learn.heldout import held_out_scores, take_groups
from edge_agent.offline.datasets import load_mvtec
from edge_agent.offline.evaluate import EmbeddingCache, _draw, _Embedder, _View
from edge_agent.offline.metrics import roc_auc

log = logging.getLogger("site_choice")
PARTS = ("mahalanobis", "patch-knn")
N, FACTOR, REPLICATES, MAX_FOLDS, SEED = 10, 10, 5, 5, 0
#: Policies that are no preset: a Table 4 row with the rotation opened to any angle (parts lying at any angle).
EXTRA = {
    "screw360": dataclasses.replace(PRESETS["screw"], rotate_deg=180.0),
    "object360": dataclasses.replace(PRESETS["object"], rotate_deg=180.0),
}


def alignments(folder: Path) -> np.ndarray:
    ds = load_mvtec(folder)
    return np.array([orientation_alignment([read_image(ds.train[i]) for i in _draw(SEED, N, rep, len(ds.train))])
                     for rep in range(REPLICATES)])


def policy_of(name: str) -> AugmentationPolicy:
    return EXTRA[name] if name in EXTRA else PRESETS[name]


def _log(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(x, dtype=np.float64), 1e-12))


def collect(folder: Path, preset: str, extractor: FeatureExtractor, cache: Path) -> dict[str, np.ndarray]:
    """Per replicate and part: z of the test images, of the held-out originals, copies and damaged copies."""
    ds = load_mvtec(folder)
    emb = _Embedder(extractor, EmbeddingCache(cache, extractor.manifest.model_id), policy_of(preset), SEED)
    draws = [_draw(SEED, N, rep, len(ds.train)) for rep in range(REPLICATES)]
    view = _View(emb, ds, {FACTOR: {int(i) for idx in draws for i in idx}}, damage=True)  # as captured
    test, damaged = view.test, view.damaged
    out: dict[str, list] = {f"{k}/{p}": [] for k in ("test", "orig", "copies", "damage") for p in PARTS}
    for rep, idx in enumerate(draws):
        feats = view.train_features(idx, FACTOR)
        by_group = take_groups(feats, group_indices(N, FACTOR))
        n_dmg = len(next(iter(damaged[idx[0]].values())))
        probes = [{k: np.concatenate([g[k], np.asarray(damaged[i][k])]) for k in g} for g, i in zip(by_group, idx)]
        for part in PARTS:
            held = held_out_scores(partial(make_detector, part), by_group, probes, MAX_FOLDS)
            lg = _log(np.stack(held))  # (N, 1 + FACTOR + n_dmg)
            loc, scale = lg[:, 0].mean(), max(lg[:, 0].std(ddof=1), 1e-6)
            det = make_detector(part).fit(feats)
            z = lambda a: (a - loc) / scale  # noqa: E731
            out[f"test/{part}"].append(z(_log(det.score_samples(test))))
            out[f"orig/{part}"].append(z(lg[:, 0]))
            out[f"copies/{part}"].append(z(lg[:, 1:1 + FACTOR]))
            out[f"damage/{part}"].append(z(lg[:, 1 + FACTOR:1 + FACTOR + n_dmg]))
        log.info("%s %s replicate %d: AUROC %s", ds.name, preset, rep, {
            p: round(roc_auc(ds.test_labels, out[f"test/{p}"][-1]), 3) for p in PARTS})
    arrays = {k: np.stack(v) for k, v in out.items()}
    arrays["labels"] = ds.test_labels
    return arrays


# ---- weightings of the two parts: w = weight of the Gaussian (mahalanobis), 1 - w of the patch memory -----------

def _mean(a: np.ndarray) -> float:
    return float(np.mean(a))


def rule_weights(r: dict[str, np.ndarray], rep: int) -> dict[str, float]:
    """Label-free rules: each gives the Gaussian's weight from the good images (and their damaged copies) alone."""
    mu = {p: _mean(r[f"damage/{p}"][rep]) for p in PARTS}  # damage shift, as CombinedDetector
    cp = {p: _mean(r[f"copies/{p}"][rep]) for p in PARTS}  # held-out good copies' shift (pose/light variation)
    sd = {p: float(np.std(r[f"damage/{p}"][rep])) for p in PARTS}
    g, k = PARTS

    def share(a: dict[str, float]) -> float:
        a = {p: max(v, 0.0) for p, v in a.items()}
        return 0.5 if a[g] + a[k] == 0 else a[g] / (a[g] + a[k])

    out = {"damage (shipped)": share(mu) if max(mu.values()) > 1.0 else 0.5}
    out["damage net of copies"] = share({p: mu[p] - cp[p] for p in PARTS})
    out["damage / its spread"] = share({p: mu[p] / np.sqrt((1 + sd[p] ** 2) / 2) for p in PARTS})
    net = {p: (mu[p] - cp[p]) / np.sqrt((1 + sd[p] ** 2) / 2) for p in PARTS}
    out["net of copies / spread"] = share(net)
    out["pick by net of copies"] = 1.0 if net[g] >= net[k] else 0.0
    # Shrink the shipped damage weights half-way to equal weights.
    out["damage shrunk to 1/2"] = 0.5 * out["damage (shipped)"] + 0.25
    # The Gaussian alone where the good images show the part at any angle (Rayleigh's test), else the shipped rule.
    aligned = is_aligned(float(r["alignment"][rep]), N)
    out["Gaussian if unaligned, else damage"] = out["damage (shipped)"] if aligned else 1.0
    return out


def auroc_of(r: dict[str, np.ndarray], rep: int, w: float) -> float:
    g, k = PARTS
    return roc_auc(r["labels"], w * r[f"test/{g}"][rep] + (1 - w) * r[f"test/{k}"][rep])


GRID = [round(x, 1) for x in np.linspace(0, 1, 11)]


def analyse(results: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """candidate -> {set: mean AUROC over replicates}; candidates: fixed weights and the label-free rules."""
    table: dict[str, dict[str, float]] = {}
    weights: dict[str, dict[str, float]] = {}
    for name, r in results.items():
        reps = range(len(r["test/mahalanobis"]))
        for w in GRID:
            table.setdefault(f"w_gauss={w:.1f}", {})[name] = float(np.mean([auroc_of(r, i, w) for i in reps]))
        g, k = PARTS
        table.setdefault("max of the two z", {})[name] = float(np.mean(
            [roc_auc(r["labels"], np.maximum(r[f"test/{g}"][i], r[f"test/{k}"][i])) for i in reps]))
        for rule in rule_weights(r, 0):
            ws = [rule_weights(r, i)[rule] for i in reps]
            table.setdefault(f"rule: {rule}", {})[name] = float(np.mean([auroc_of(r, i, w) for i, w in zip(reps, ws)]))
            weights.setdefault(f"rule: {rule}", {})[name] = float(np.mean(ws))
    return table, weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="+", help="NAME=FOLDER:PRESET")
    ap.add_argument("--out", type=Path, default=Path("build/site_choice"))
    ap.add_argument("--cache", type=Path, default=Path("build/embeddings"))
    ap.add_argument("--model", type=Path, default=Path("models/efficientnet-lite0-int8"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    extractor = None
    results = {}
    for spec in args.sets:
        name, _, rest = spec.partition("=")
        folder, _, preset = rest.rpartition(":")
        path = args.out / f"{name}-{preset}.npz"
        if not path.is_file():
            extractor = extractor or FeatureExtractor(args.model)
            np.savez(path, **collect(Path(folder), preset, extractor, args.cache))
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        if "alignment" not in arrays:
            arrays["alignment"] = alignments(Path(folder))
            np.savez(path, **arrays)
        results[f"{name}:{preset}"] = arrays
    from bench.loso import candidates_markdown, loso_markdown

    table, weights = analyse(results)
    sets = list(results)
    print("### Orientation alignment of the drawn good images (R-bar per replicate; unaligned below "
          f"{np.sqrt(-np.log(0.01) / N):.2f})\n")
    for s in sets:
        print(f"- {s}: " + ", ".join(f"{a:.2f}" for a in results[s]["alignment"]))
    print()
    print(candidates_markdown(table, sets, "Weightings of the combined detector's parts (mean AUROC, 5 replicates)"))
    print("### Gaussian weight each label-free rule picked (mean over replicates)\n")
    print("| rule | " + " | ".join(sets) + " |\n|---|" + "---|" * len(sets))
    for rule, per in weights.items():
        print(f"| {rule} | " + " | ".join(f"{per[s]:.2f}" for s in sets) + " |")
    print()
    print(loso_markdown(table, sets, "Leave-one-set-out over fixed weights and rules"))
    fixed = {c: v for c, v in table.items() if c.startswith("w_gauss")}
    print(loso_markdown(fixed, sets, "Leave-one-set-out over fixed weights only"))
    (args.out / "table.json").write_text(json.dumps({"auroc": table, "weights": weights}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
