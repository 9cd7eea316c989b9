"""Leave-one-set-out (LOSO) choices over the shared sets, from `edge-agent evaluate` outputs (issue 14).

A rule, weight or default chosen while looking at a set is no evidence for that set. For each held-out set this
picks the candidate (a detector under a preset rule) with the best mean AUROC over the OTHER sets, and reports
that candidate's AUROC on the held-out set; the LOSO mean is the mean of those. Run:

    python -m bench.loso build/results            (reads build/results/five-<set>-<preset>/results.csv)

Preset rules (how a site gets its augmentation): ``category`` = the set's own row of the paper's Table 4 where
it is an MVTec AD category (bottle, screw), else the generic ``object`` preset; ``generic`` = ``object`` always
(a site that is no MVTec category). elpv and juice bottle only have ``object`` runs, the same under both rules.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

SETS = {  # dataset folder name -> short name, in the order of the tables
    "mvtec_ad_bottle": "bottle",
    "elpv_mono": "elpv mono",
    "elpv_poly": "elpv poly",
    "mvtec_screw": "screw",
    "mvtec_loco_juice_bottle": "juice bottle",
}
CATEGORY = {"mvtec_ad_bottle": "bottle", "mvtec_screw": "screw"}  # sets that are an MVTec AD category


def read_runs(root: Path) -> dict[tuple[str, str], list[dict]]:
    """(dataset, preset) -> result rows, from ``five-<set>-<preset>/results.csv`` under ``root``."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(root.glob("five-*/results.csv")):
        preset = path.parent.name.rsplit("-", 1)[1]
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows:
            runs[(rows[0]["dataset"], preset)] = rows
    return runs


def per_detector(rows: list[dict]) -> dict[str, dict[str, float]]:
    """detector -> mean/std AUROC over replicates, mean FRR and DR at the label-free threshold."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["detector"]].append(r)
    out = {}
    for det, rs in by.items():
        au = np.array([float(r["auroc"]) for r in rs])
        out[det] = {"auroc": float(au.mean()), "std": float(au.std()), "reps": len(rs),
                    "frr": float(np.mean([float(r["false_reject_rate"]) for r in rs])),
                    "dr": float(np.mean([float(r["detection_rate"]) for r in rs]))}
    return out


def candidates(runs: dict[tuple[str, str], list[dict]]) -> dict[str, dict[str, float]]:
    """'<detector> / <rule>' -> {dataset: mean AUROC}, for the sets where that candidate was measured."""
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for ds in SETS:
        for rule in ("category", "generic"):
            preset = CATEGORY.get(ds, "object") if rule == "category" else "object"
            if (ds, preset) not in runs:
                continue
            for det, s in per_detector(runs[(ds, preset)]).items():
                table[f"{det} / {rule}"][ds] = s["auroc"]
    return dict(table)


def loso(table: dict[str, dict[str, float]], sets: list[str]) -> list[dict]:
    """Per held-out set: the candidate with the best mean over the other sets, and its AUROC on the held-out one.

    Only candidates measured on every set in ``sets`` compete (ties: the first in sorted order).
    """
    full = sorted(c for c, v in table.items() if all(s in v for s in sets))
    out = []
    for held in sets:
        others = [s for s in sets if s != held]
        pick = max(full, key=lambda c: (np.mean([table[c][s] for s in others]), -full.index(c)))
        best = max(full, key=lambda c: table[c][held])
        out.append({"held_out": held, "picked": pick, "auroc": table[pick][held],
                    "best": best, "best_auroc": table[best][held]})
    return out


def loso_markdown(table: dict[str, dict[str, float]], sets: list[str], title: str) -> str:
    rows = loso(table, sets)
    lines = [f"### {title}", "", "| held-out set | chosen on the other sets | its AUROC | best on this set (by labels) | AUROC | lost |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {SETS.get(r['held_out'], r['held_out'])} | {r['picked']} | {r['auroc']:.3f} | {r['best']} | "
                     f"{r['best_auroc']:.3f} | {r['best_auroc'] - r['auroc']:.3f} |")
    lines.append(f"| **mean** | | **{np.mean([r['auroc'] for r in rows]):.3f}** | | "
                 f"{np.mean([r['best_auroc'] for r in rows]):.3f} | |")
    return "\n".join(lines) + "\n"


def candidates_markdown(table: dict[str, dict[str, float]], sets: list[str], title: str) -> str:
    lines = [f"### {title}", "", "| candidate | " + " | ".join(SETS.get(s, s) for s in sets) + " | mean |",
             "|---|" + "---|" * (len(sets) + 1)]
    for c in sorted(table, key=lambda c: -np.mean([table[c].get(s, np.nan) for s in sets])):
        vals = [table[c].get(s) for s in sets]
        mean = f"{np.mean(vals):.3f}" if all(v is not None for v in vals) else ""
        lines.append(f"| {c} | " + " | ".join("" if v is None else f"{v:.3f}" for v in vals) + f" | {mean} |")
    return "\n".join(lines) + "\n"


def five_set_markdown(runs: dict[tuple[str, str], list[dict]]) -> str:
    lines = ["### Five shared sets: Lite0 int8, N=10, x10, 5 replicates (AUROC mean ± std; FRR / DR at the "
             "label-free threshold)", "",
             "| set | preset | combined | mahalanobis | patch-knn | combined FRR / DR | mahalanobis FRR / DR | "
             "patch-knn FRR / DR |", "|---|---|---|---|---|---|---|---|"]
    for ds, name in SETS.items():
        for preset in sorted({p for d, p in runs if d == ds}, key=lambda p: p == "object"):
            s = per_detector(runs[(ds, preset)])
            dets = ("combined", "mahalanobis", "patch-knn")
            lines.append(f"| {name} | {preset} | " + " | ".join(
                f"{s[d]['auroc']:.3f} ± {s[d]['std']:.3f}" if d in s else "" for d in dets) + " | " + " | ".join(
                f"{s[d]['frr']:.2f} / {s[d]['dr']:.2f}" if d in s else "" for d in dets) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="folder holding the five-<set>-<preset> evaluate outputs")
    args = ap.parse_args(argv)
    runs = read_runs(args.root)
    if not runs:
        print(f"no five-*/results.csv under {args.root}", file=sys.stderr)
        return 1
    print(five_set_markdown(runs))
    table = candidates(runs)
    sets = [s for s in SETS if any(s in v for v in table.values())]
    print(candidates_markdown(table, sets, "Candidates (mean AUROC per set)"))
    print(loso_markdown(table, sets, "Leave-one-set-out: each set's choice made on the other sets"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
