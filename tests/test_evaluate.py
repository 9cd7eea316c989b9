"""The paper's evaluation protocol on a tiny MVTec-layout set made of real images (`real_set`: bottle or elpv cells),
with the shipped int8 model: output files, summary rows, the embedding cache, data set errors, the elpv writer and
the CLI entry."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.learn.augment import PRESETS
from edge_agent.offline.datasets import load_mvtec, write_elpv
from edge_agent.offline.evaluate import EvalSettings, evaluate
from edge_agent.embed.features import FeatureExtractor
from edge_agent.learn.fitting import FitSettings
from edge_agent.capture.images import ImageFolderError, list_images, read_image
from edge_agent.learn.pseudo_defects import DEFECTS_PER_IMAGE
from tests.synthetic import lying, part_from

ROOT = Path(__file__).resolve().parents[1]
DETECTORS = ["mahalanobis", "knn", "padim"]


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """PaDiM fits many small covariances; on a busy 2-core machine OpenBLAS threads spin against each other and
    a fit that takes 0.3 s can take 15 s. One thread keeps the run time predictable (results are the same)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def defect_kind(real_set) -> str:
    """The real set's defect folder: ``broken_large`` (bottle) or ``defective`` (elpv); both sort before good."""
    return real_set.defects[0].parent.name


@pytest.fixture(scope="module")
def tiny_set(real_set, defect_kind, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sets") / "tiny_set"
    layout = {"train/good": real_set.train_good[:6], "test/good": real_set.test_good[:4],
              f"test/{defect_kind}": real_set.defects[:4]}
    for dst, paths in layout.items():
        (root / dst).mkdir(parents=True)
        assert len(paths) == (6 if dst == "train/good" else 4)
        for p in paths:
            shutil.copyfile(p, root / dst / p.name)
    return root


def settings(sizes=(3, "max")) -> EvalSettings:
    # N=3: with factor 0, N=2 is skipped (one image per leave-one-out fit; see the N=2 test below).
    # Three threshold folds instead of up to ten: fewer PaDiM fits, the same code path.
    return EvalSettings(sizes=list(sizes), replicates=2, factors=[0, 2], detectors=DETECTORS,
                        policy=PRESETS["bottle"], fit=FitSettings(max_folds=3))


class CountingExtractor:
    """The real FeatureExtractor with its per-image embedding counted (every embed goes through embed_one)."""

    def __init__(self, model_dir: Path, monkeypatch) -> None:
        self.extractor = FeatureExtractor(model_dir)
        self.calls = 0
        real = self.extractor.embed_one

        def counted(image):
            self.calls += 1
            return real(image)

        monkeypatch.setattr(self.extractor, "embed_one", counted)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def first_run(tiny_set, shipped_model, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        counting = CountingExtractor(shipped_model, mp)
        work = tmp_path_factory.mktemp("eval")
        out, cache = work / "out", work / "cache"
        summary = evaluate(tiny_set, counting.extractor, out, cache, settings())
    finally:
        mp.undo()
    return {"summary": summary, "out": out, "cache": cache, "calls": counting.calls,
            "model_id": counting.extractor.manifest.model_id}


def test_load_mvtec_indexes_the_tiny_set(tiny_set, defect_kind):
    ds = load_mvtec(tiny_set)
    assert ds.name == "tiny_set"
    assert len(ds.train) == 6 and len(ds.test) == 8
    assert ds.test_kinds == [defect_kind] * 4 + ["good"] * 4  # folders in name order
    assert ds.test_labels.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert all(p.parent.name == "good" for p in ds.train)


def test_evaluate_writes_every_output(first_run):
    out = first_run["out"]
    for name in ("results.csv", "summary.csv", "summary.md", "auroc_vs_n.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "auroc_vs_n.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_have_one_row_per_fit(first_run):
    rows = read_csv(first_run["out"] / "results.csv")
    # Per factor: N=3 twice (replicates) and N=6 (= max: all the images, so once), for each detector.
    assert len(rows) == 2 * (2 + 1) * len(DETECTORS)
    keys = sorted((r["detector"], int(r["factor"]), int(r["n"]), int(r["replicate"])) for r in rows)
    expected = sorted((d, f, n, rep) for d in DETECTORS for f in (0, 2) for n, reps in ((3, 2), (6, 1))
                      for rep in range(reps))
    assert keys == expected
    for r in rows:
        assert r["dataset"] == "tiny_set" and r["model"] == first_run["model_id"]
        assert 0.0 <= float(r["auroc"]) <= 1.0
        assert float(r["threshold"]) > 0
        assert 0.0 <= float(r["false_reject_rate"]) <= 1.0 and 0.0 <= float(r["detection_rate"]) <= 1.0


def test_summary_rows(first_run):
    summary = first_run["summary"]
    assert sorted((s["detector"], s["factor"], s["n"]) for s in summary) == sorted(
        (d, f, n) for d in DETECTORS for f in (0, 2) for n in (3, 6))
    for s in summary:
        assert s["replicates"] == (2 if s["n"] == 3 else 1)
        assert 0.0 <= s["auroc_mean"] <= 1.0 and s["auroc_std"] >= 0
        assert 0.0 <= s["area_auc_percent"] <= 1.0
        if s["n"] == 6:
            assert s["auroc_std"] == 0.0
    # Written as returned.
    on_disk = read_csv(first_run["out"] / "summary.csv")
    assert len(on_disk) == len(summary)
    assert [float(r["auroc_mean"]) for r in on_disk] == pytest.approx([s["auroc_mean"] for s in summary])
    # Clear real defects (large breaks, cells certainly defective): with all six good images the paper's detector
    # ranks them well (measured 1.0 on both sets).
    maha = {(s["factor"], s["n"]): s for s in summary if s["detector"] == "mahalanobis"}
    assert maha[(0, 6)]["auroc_mean"] >= 0.8 and maha[(2, 6)]["auroc_mean"] >= 0.8


def test_summary_markdown(first_run):
    md = (first_run["out"] / "summary.md").read_text()
    assert md.startswith(f"### tiny_set - {first_run['model_id']}")
    assert "| N=3 | N=6 |" in md
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| detector")]
    assert len(table_rows) == len(DETECTORS) * 2
    for det in DETECTORS:
        for factor in (0, 2):
            assert any(line.startswith(f"| {det} | {factor} | ") for line in table_rows), (det, factor)


def test_first_run_embeds_each_image_once(first_run):
    # 8 test + 6 training originals, and 2 augmented copies of each training image (one factor > 0).
    assert first_run["calls"] == 8 + 6 + 6 * 2
    assert len(list(first_run["cache"].rglob("*.npz"))) == 8 + 6 + 6


def test_second_run_reuses_the_cache(first_run, tiny_set, shipped_model, tmp_path, monkeypatch):
    # Same data, sizes, factors and policy: the same embeddings. PaDiM is left out only to save its fit time.
    counting = CountingExtractor(shipped_model, monkeypatch)
    again = settings()
    again.detectors = ["mahalanobis", "knn"]
    summary = evaluate(tiny_set, counting.extractor, tmp_path / "out2", first_run["cache"], again)
    assert counting.calls == 0
    before = {(s["detector"], s["factor"], s["n"]): s for s in first_run["summary"]}
    assert len(summary) == 8
    for s in summary:
        assert s["auroc_mean"] == pytest.approx(before[(s["detector"], s["factor"], s["n"])]["auroc_mean"], abs=1e-9)
    assert (tmp_path / "out2" / "summary.md").is_file()


def test_combined_gets_damaged_copies_embedded_once(first_run, tiny_set, shipped_model, tmp_path, monkeypatch):
    # The combined detector is weighted by synthetic damage: 3 damaged copies of each of the 6 training images are
    # embedded once (everything else comes from the first run's cache), and a second run embeds nothing.
    cache = tmp_path / "cache"
    shutil.copytree(first_run["cache"], cache)  # the first run's cache stays as other tests count it
    counting = CountingExtractor(shipped_model, monkeypatch)
    combined = EvalSettings(sizes=["max"], replicates=1, factors=[2], detectors=["patch-knn", "combined"],
                            policy=PRESETS["bottle"], fit=FitSettings(max_folds=3))
    summary = evaluate(tiny_set, counting.extractor, tmp_path / "o1", cache, combined)
    assert counting.calls == 6 * DEFECTS_PER_IMAGE
    assert {s["detector"] for s in summary} == {"patch-knn", "combined"}
    assert all(s["auroc_mean"] >= 0.8 for s in summary)  # clear real defects, all six good images
    counting.calls = 0
    evaluate(tiny_set, counting.extractor, tmp_path / "o2", cache, combined)
    assert counting.calls == 0


def originals_only() -> EvalSettings:
    return EvalSettings(sizes=["max"], factors=[0], detectors=["knn"])


def test_a_changed_image_is_embedded_again(tiny_set, shipped_model, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(tiny_set, data)
    cache = tmp_path / "cache"
    counting = CountingExtractor(shipped_model, monkeypatch)
    evaluate(data, counting.extractor, tmp_path / "o1", cache, originals_only())
    assert counting.calls == 14
    touched = list_images(data / "test" / "good")[0]
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    counting.calls = 0
    evaluate(data, counting.extractor, tmp_path / "o2", cache, originals_only())
    assert counting.calls == 1


def test_a_truncated_cache_file_is_recomputed(tiny_set, shipped_model, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    counting = CountingExtractor(shipped_model, monkeypatch)
    evaluate(tiny_set, counting.extractor, tmp_path / "o1", cache, originals_only())
    victim = min(cache.rglob("*.npz"))
    victim.write_bytes(victim.read_bytes()[:50])
    counting.calls = 0
    evaluate(tiny_set, counting.extractor, tmp_path / "o2", cache, originals_only())
    assert counting.calls == 1


def test_evaluate_with_two_images_and_no_augmentation(first_run, tiny_set, shipped_model, tmp_path):
    extractor = FeatureExtractor(shipped_model)
    two = settings(sizes=(2, "max"))
    two.detectors = ["mahalanobis"]
    summary = evaluate(tiny_set, extractor, tmp_path / "out", first_run["cache"], two)
    assert {(s["factor"], s["n"]) for s in summary} >= {(2, 2), (0, 6), (2, 6)}
    assert (0, 2) not in {(s["factor"], s["n"]) for s in summary}  # skipped: one sample per fold
    assert all(0.0 <= s["auroc_mean"] <= 1.0 for s in summary)


# ---- data sets ---------------------------------------------------------------------------------------------


def test_load_mvtec_without_train_good(tiny_set, tmp_path):
    shutil.copytree(tiny_set / "test", tmp_path / "set" / "test")
    with pytest.raises(ImageFolderError, match=r"train/good holds no images: is .*set in MVTec layout"):
        load_mvtec(tmp_path / "set")


def test_load_mvtec_with_an_empty_train_good(tiny_set, tmp_path):
    shutil.copytree(tiny_set / "test", tmp_path / "set" / "test")
    (tmp_path / "set" / "train" / "good").mkdir(parents=True)
    with pytest.raises(ImageFolderError, match="train/good holds no images"):
        load_mvtec(tmp_path / "set")


def test_load_mvtec_without_defects(tiny_set, tmp_path):
    shutil.copytree(tiny_set / "train", tmp_path / "set" / "train")
    shutil.copytree(tiny_set / "test" / "good", tmp_path / "set" / "test" / "good")
    (tmp_path / "set" / "test" / "scratch").mkdir()  # a defect folder with nothing in it does not count
    with pytest.raises(ImageFolderError, match="needs both good images and at least one defect folder"):
        load_mvtec(tmp_path / "set")


def test_load_mvtec_without_test_good(tiny_set, defect_kind, tmp_path):
    shutil.copytree(tiny_set / "train", tmp_path / "set" / "train")
    shutil.copytree(tiny_set / "test" / defect_kind, tmp_path / "set" / "test" / defect_kind)
    with pytest.raises(ImageFolderError, match=r"test/good is missing"):
        load_mvtec(tmp_path / "set")


def test_write_elpv_gives_a_disjoint_mvtec_layout(tmp_path):
    pytest.importorskip("elpv_dataset")
    root = write_elpv(tmp_path, "mono", n_train=20)
    assert root == tmp_path / "elpv_mono"
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]
    assert sorted(p.name for p in (root / "test").iterdir()) == ["defective", "good"]
    ds = load_mvtec(root)
    assert len(ds.train) == 20
    train = {p.name for p in ds.train}
    test_good = {p.name for p, k in zip(ds.test, ds.test_kinds) if k == "good"}
    defective = {p.name for p, k in zip(ds.test, ds.test_kinds) if k == "defective"}
    assert test_good and defective
    assert not train & test_good and not train & defective and not test_good & defective
    assert int(ds.test_labels.sum()) == len(defective)
    # Same seed, same split; another seed, another draw.
    again = write_elpv(tmp_path / "again", "mono", n_train=20)
    assert sorted(p.name for p in load_mvtec(again).train) == sorted(train)
    other = write_elpv(tmp_path / "other", "mono", n_train=20, seed=1)
    assert sorted(p.name for p in load_mvtec(other).train) != sorted(train)


def test_write_elpv_unknown_cell_type(tmp_path):
    pytest.importorskip("elpv_dataset")
    with pytest.raises(ValueError, match="unknown elpv cell type 'amorphous'"):
        write_elpv(tmp_path, "amorphous")


def test_cli_evaluate_help():
    proc = subprocess.run([sys.executable, "-m", "edge_agent.cli", "evaluate", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    for option in ("--data", "--sizes", "--replicates", "--factors", "--detectors", "--preset", "--cache"):
        assert option in proc.stdout


def test_only_the_drawn_training_images_get_copies(tiny_set, shipped_model, tmp_path, monkeypatch):
    # N=2, one replicate, factor 2: the 2 drawn images, their copies and damaged copies only, not all 6.
    counting = CountingExtractor(shipped_model, monkeypatch)
    few = EvalSettings(sizes=[2], replicates=1, factors=[2], detectors=["mahalanobis", "combined"],
                       policy=PRESETS["bottle"], fit=FitSettings(max_folds=2))
    summary = evaluate(tiny_set, counting.extractor, tmp_path / "out", tmp_path / "cache", few)
    assert {(s["detector"], s["n"]) for s in summary} == {("mahalanobis", 2), ("combined", 2)}
    assert counting.calls == 8 + 2 + 2 * 2 + 2 * DEFECTS_PER_IMAGE


def test_parts_at_any_angle_are_evaluated_upright_and_a_change_to_the_turning_code_reembeds_them(
        real_set, shipped_model, tmp_path, monkeypatch):
    """`evaluate` fits as the camera does, turning long parts at any angle upright, and its cache must not hand
    back windows that older turning code cut (it once did: a screw figure was 0.02 off)."""
    import edge_agent.offline.evaluate as evaluate_module

    part = part_from(read_image(real_set.train_good[0]))
    scratched = part.copy()
    cv2.line(scratched, (30, 40), (170, 70), 255, 4)
    rng = np.random.default_rng(4)
    root = tmp_path / "turned_set"
    for sub, piece, n in (("train/good", part, 6), ("test/good", part, 3), ("test/scratch", scratched, 3)):
        (root / sub).mkdir(parents=True)
        for i, degrees in enumerate(rng.uniform(0, 360, n)):
            cv2.imwrite(str(root / sub / f"{i:03d}.png"), cv2.cvtColor(lying(piece, degrees, (200, 200)),
                                                                       cv2.COLOR_RGB2BGR))
    few = EvalSettings(sizes=[6], replicates=1, factors=[1], detectors=["mahalanobis"],
                       policy=PRESETS["object"], fit=FitSettings(max_folds=3))
    counting = CountingExtractor(shipped_model, monkeypatch)
    first = evaluate(root, counting.extractor, tmp_path / "a", tmp_path / "cache", few)
    assert first[0]["auroc_mean"] == 1.0  # turned upright, the scratch stands out wherever the part lies
    embedded = counting.calls
    evaluate(root, counting.extractor, tmp_path / "b", tmp_path / "cache", few)
    assert counting.calls == embedded  # all from the cache
    monkeypatch.setattr(evaluate_module, "_UPRIGHT_CODE", "edited")
    evaluate(root, counting.extractor, tmp_path / "c", tmp_path / "cache", few)
    assert counting.calls - embedded == 6 + 6 + 6  # the turned test split, training images and copies again
