"""False rejects and detections at the label-free threshold, per threshold rule, on the shared real sets.

Issue 14 item 4: the operator states the share of good parts they accept to reject (``target_false_reject``)
and the threshold follows from the leave-one-out scores of the good images. This script fits each detector
exactly as the camera does (`edge_agent.learn.fitting.fit_features`, through `edge_agent.offline.evaluate`'s
`replicate_fits`: N good images drawn with seeds [seed, N, replicate], x10 augmentation, the pose gate and the
upright window; the protocol runs once per seed of ``--aug-seeds``, which draws the images, the augmented and
the damaged copies anew, since all are random), keeps
every replicate's leave-one-out scores and test scores, and then applies every candidate rule to the same runs:

- the rule it replaces (log-normal 0.99 quantile, 10 % margin, sensitivity 0.5);
- the shipped rule (`calibrate_threshold` with a target) at each candidate target;
- candidate tails that were tried and dropped (docs/threshold.md says why).

For each it reports the false-reject rate on the unseen good test images, the detection rate on the defective
ones, and the detection rate at an oracle threshold that rejects 5 % of the good test images (what the
detector could do with a perfectly placed threshold). The default target is chosen leave-one-set-out: for each
set, from the other sets' figures only (`loso`).

    python -m bench.frr_target --out build/frr-target      # fits once per set and detector, then reports
"""

from __future__ import annotations

from edge_agent.system.threads import limit_threads

limit_threads()  # an entry point: before cv2 and numpy load, as edge-agent does

import argparse  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402
from statistics import NormalDist  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
from scipy.stats import t as student_t  # noqa: E402

from edge_agent.embed.features import FeatureExtractor  # noqa: E402
from edge_agent.learn.augment import PRESETS  # noqa: E402
from edge_agent.learn.threshold import DEFAULT_TARGET_FALSE_REJECT, calibrate_threshold, is_anomalous  # noqa: E402
from edge_agent.offline.datasets import load_mvtec  # noqa: E402
from edge_agent.offline.evaluate import EvalSettings, replicate_fits  # noqa: E402

log = logging.getLogger("bench.frr_target")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Each shared set with the augmentation preset the evaluation protocol uses for it (an MVTec category's own
#: policy where the project has one, the generic "object" otherwise; none was chosen for the threshold).
SETS = {
    "bottle": (SHARED / "mvtec_ad_bottle", "bottle"),
    "elpv_mono": (Path("build/data/elpv_mono"), "object"),
    "elpv_poly": (Path("build/data/elpv_poly"), "object"),
    "screw": (SHARED / "mvtec_screw", "screw"),
    "juice_bottle": (SHARED / "mvtec_loco_juice_bottle", "object"),
}
TARGETS = (0.002, 0.003, 0.005, 0.007, 0.01, 0.02, 0.03, 0.05, 0.1)
ORACLE_FRR = 0.05
#: The issue's targets: the default must keep the mean false-reject rate over the sets at or below this.
MAX_MEAN_FRR = 0.03


def collect(name: str, detector: str, extractor: FeatureExtractor, cache_dir: Path, out: Path, n: int,
            replicates: int, factor: int, aug_seed: int = 0) -> dict[str, np.ndarray]:
    """Leave-one-out scores (replicates, n), test scores (replicates, tests) and test labels of one set and
    detector; kept in ``out`` so that a rerun only recomputes thresholds. The pose gate applies as on the camera."""
    path = out / f"{name}-{detector}-n{n}-x{factor}-seed{aug_seed}.npz"  # a protocol seed, not only the copies
    if path.is_file():
        with np.load(path) as z:
            return dict(z)
    root, preset = SETS[name]
    dataset = load_mvtec(root)
    # `edge-agent evaluate`'s own fits (draws, copies seeded by the image's place in the training list, the pose
    # gate and the upright window), so that this and `evaluate` judge the same fits.
    settings = EvalSettings(sizes=(n,), replicates=replicates, factors=(factor,), detectors=(detector,),
                            policy=PRESETS[preset], seed=aug_seed)
    loo, scores = [], []
    for fit in replicate_fits(dataset, extractor, cache_dir, settings):
        loo.append(fit.result.loo_scores)
        scores.append(fit.test_scores)
        log.info("%s %s replicate %d fitted", name, detector, fit.replicate)
    data = {"loo": np.array(loo), "scores": np.array(scores), "labels": dataset.test_labels}
    out.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return data


def stack(runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Fits of the same set under several protocol seeds as one run with their replicates one after another."""
    return {k: runs[0][k] if k == "labels" else np.concatenate([r[k] for r in runs]) for k in runs[0]}


# ---- threshold rules: (leave-one-out scores, target) -> threshold -------------------------------------------


def old_rule(loo: np.ndarray, target: float) -> float:
    """The replaced rule (ignores the target): max(empirical, log-normal) 0.99 quantile, x 1.1, sensitivity 0.5."""
    logs = np.log(loo)
    tail = np.exp(logs.mean() + NormalDist().inv_cdf(0.99) * logs.std(ddof=1))
    return float(max(np.quantile(loo, 0.99), tail) * 1.1)


def conformal(loo: np.ndarray, target: float) -> float:
    """The ceil((n+1)(1-target))-th smallest score; infinite (nothing rejected) below the finite-sample limit."""
    k = int(np.ceil((loo.size + 1) * (1 - target) - 1e-9))
    return float(np.sort(loo)[k - 1]) if k <= loo.size else float("inf")


def lognormal_plugin(loo: np.ndarray, target: float) -> float:
    logs = np.log(loo)
    return float(np.exp(logs.mean() + NormalDist().inv_cdf(1 - target) * logs.std(ddof=1)))


def lognormal_predictive(loo: np.ndarray, target: float) -> float:
    """Prediction bound of a normal with unknown mean and variance on the log scores (Student t)."""
    logs, n = np.log(loo), loo.size
    return float(np.exp(logs.mean() + student_t.ppf(1 - target, n - 1) * logs.std(ddof=1) * np.sqrt(1 + 1 / n)))


def pareto_tail(loo: np.ndarray, target: float) -> float:
    """Exponential tail on the log scores above their median (a Pareto tail on the scores)."""
    logs = np.log(loo)
    med = np.median(logs)
    scale = np.mean(logs[logs > med] - med)
    return float(np.exp(med + scale * np.log(0.5 / target)))


def shipped(loo: np.ndarray, target: float) -> float:
    return calibrate_threshold(loo, target_false_reject=target)


def shipped_empirical(loo: np.ndarray, target: float) -> float:
    return calibrate_threshold(loo, target_false_reject=target, method="empirical")


#: Each rule with the targets it is measured at: one for those whose threshold does not depend on the target
#: below 1 / 11 at N=10 (conformal is infinite there and is shown at 0.1; the empirical method is the largest score).
RULES: dict[str, tuple[Callable[[np.ndarray, float], float], tuple[float, ...]]] = {
    "old (q0.99 x1.1)": (old_rule, (0.01,)), "conformal": (conformal, (0.1,)),
    "lognormal plug-in": (lognormal_plugin, TARGETS), "lognormal predictive": (lognormal_predictive, TARGETS),
    "pareto tail": (pareto_tail, TARGETS), "shipped": (shipped, TARGETS),
    "shipped, empirical": (shipped_empirical, (0.01,)),
}


def rates(data: dict[str, np.ndarray], rule: Callable[[np.ndarray, float], float],
          target: float) -> tuple[float, float, float]:
    """Mean over replicates of the false-reject rate on good test images and the detection rate on defective ones,
    and the false-reject rate of the worst replicate (one unlucky draw of good images is one shift's retrain)."""
    good, bad = data["labels"] == 0, data["labels"] == 1
    frr, dr = [], []
    for loo, scores in zip(data["loo"], data["scores"]):
        flagged = is_anomalous(scores, rule(loo, target))
        frr.append(flagged[good].mean())
        dr.append(flagged[bad].mean())
    return float(np.mean(frr)), float(np.mean(dr)), float(np.max(frr))


def oracle_detection(data: dict[str, np.ndarray], frr: float = ORACLE_FRR) -> float:
    """Detection rate at the threshold that rejects at most ``frr`` of the good test images (labels used)."""
    good, bad = data["labels"] == 0, data["labels"] == 1
    out = []
    for scores in data["scores"]:
        g = np.sort(scores[good])
        threshold = g[int(np.ceil((1 - frr) * g.size)) - 1]
        out.append(is_anomalous(scores[bad], threshold).mean())
    return float(np.mean(out))


def table(runs: dict[str, dict[str, np.ndarray]]) -> dict[tuple[str, float], dict[str, tuple[float, float, float]]]:
    """(rule, target) -> set -> (FRR, DR, worst replicate's FRR)."""
    out = {}
    for rule_name, (rule, targets) in RULES.items():
        for target in targets:
            out[(rule_name, target)] = {name: rates(data, rule, target) for name, data in runs.items()}
    return out


def choose(results: dict[tuple[str, float], dict[str, tuple[float, float]]], sets: list[str],
           rules: list[str]) -> tuple[str, float]:
    """The (rule, target) with the highest mean detection rate over ``sets`` among those whose mean false-reject
    rate there is at most `MAX_MEAN_FRR`; the lowest mean false-reject rate when none qualifies."""
    keys = [k for k in results if k[0] in rules]
    frr = {k: np.mean([results[k][s][0] for s in sets]) for k in keys}
    dr = {k: np.mean([results[k][s][1] for s in sets]) for k in keys}
    ok = [k for k in keys if frr[k] <= MAX_MEAN_FRR]
    return max(ok, key=lambda k: (dr[k], -frr[k])) if ok else min(keys, key=lambda k: frr[k])


def loso(results: dict[tuple[str, float], dict[str, tuple[float, float]]], sets: list[str],
         rules: list[str]) -> list[dict]:
    """For each set: the rule and target chosen on the other sets, and this set's rates there."""
    rows = []
    for held in sets:
        key = choose(results, [s for s in sets if s != held], rules)
        frr, dr, _ = results[key][held]
        rows.append({"held_out": held, "rule": key[0], "target": key[1], "frr": frr, "dr": dr})
    return rows


def report(runs_by_detector: dict[str, dict[str, dict[str, np.ndarray]]]) -> str:
    lines = []
    for detector, runs in runs_by_detector.items():
        sets = list(runs)
        results = table(runs)
        oracle = {s: oracle_detection(runs[s]) for s in sets}
        lines += [f"### {detector}: FRR / DR per set (mean of {len(next(iter(runs.values()))['loo'])} replicates; "
                  "in brackets the worst replicate's FRR)",
                  "", "| rule | target | " + " | ".join(sets) + " | mean |", "|---|---|" + "---|" * (len(sets) + 1)]
        for (rule, target), per in results.items():
            mean = np.mean([per[s] for s in sets], axis=0)
            lines.append(f"| {rule} | {'-' if rule.startswith('old') else target} | "
                         + " | ".join(f"{per[s][0]:.3f} / {per[s][1]:.2f} ({per[s][2]:.2f})" for s in sets)
                         + f" | {mean[0]:.3f} / {mean[1]:.2f} ({max(per[s][2] for s in sets):.2f}) |")
        lines.append("| oracle 5 % FRR (labels) | - | " + " | ".join(f"0.05 / {oracle[s]:.2f}" for s in sets)
                     + f" | 0.05 / {np.mean(list(oracle.values())):.2f} |")
        ratio = {s: np.median([shipped(loo, DEFAULT_TARGET_FALSE_REJECT) / old_rule(loo, 0.01)
                               for loo in runs[s]["loo"]]) for s in sets}
        lines += ["", f"Shipped threshold at the default target ({DEFAULT_TARGET_FALSE_REJECT}) over the old one, "
                  "median over replicates: " + ", ".join(f"{s} {r:.3f}" for s, r in ratio.items()), ""]
        for title, rules in (("shipped rule: target", ["shipped"]),
                             ("any tail and target", [r for r in RULES if not r.startswith("old")])):
            rows = loso(results, sets, rules)
            lines += [f"Leave-one-set-out ({title} chosen on the other sets):", "",
                      "| held-out set | chosen rule | target | FRR | DR | DR at oracle 5 % FRR |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {r['held_out']} | {r['rule']} | {r['target']} | {r['frr']:.3f} | {r['dr']:.2f} | "
                      f"{oracle[r['held_out']]:.2f} |" for r in rows]
            lines.append(f"| mean | | | {np.mean([r['frr'] for r in rows]):.3f} | "
                         f"{np.mean([r['dr'] for r in rows]):.2f} | {np.mean(list(oracle.values())):.2f} |")
            all_sets = choose(results, sets, rules)
            lines += ["", f"On all {len(sets)} sets: {all_sets[0]} at target {all_sets[1]}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/efficientnet-lite0-int8"))
    parser.add_argument("--out", type=Path, default=Path("build/frr-target"), help="kept scores and the report")
    parser.add_argument("--cache", type=Path, default=Path("build/embeddings"), help="the same as evaluate's")
    parser.add_argument("--detectors", default="combined,mahalanobis")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--replicates", type=int, default=5)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--aug-seeds", default="0,1",
                        help="seeds of evaluate's protocol: each draws the good images and their copies anew")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    extractor = FeatureExtractor(args.model, "cpu", 1)
    seeds = [int(x) for x in args.aug_seeds.split(",")]
    runs = {det: {name: stack([collect(name, det, extractor, args.cache, args.out, args.n, args.replicates,
                                       args.factor, seed) for seed in seeds])
                  for name in args.sets.split(",")} for det in args.detectors.split(",")}
    text = report(runs)
    (args.out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
