"""DetectorStore: each fit saved beside the previous ones, a ``current`` pointer, rollback, pruning, and refusal of
a detector fitted for another feature model. Real fitted detectors, the shipped model's real manifest."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json

import numpy as np
import pytest

from edge_agent.learn.detectors import MahalanobisDetector
from edge_agent.learn.detectors.persistence import DetectorFileError, save_detector
from edge_agent.learn.fitting import FitSettings, fit_features
from edge_agent.embed.manifest import load_manifest
from edge_agent.learn import store as store_module
from edge_agent.learn.store import DetectorStore, StoreError


@pytest.fixture(scope="module")
def manifest(shipped_model):
    return load_manifest(shipped_model)


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    return {"pooled/a": rng.normal(size=(24, 6)), "pooled/b": rng.normal(size=(24, 3))}


@pytest.fixture(scope="module")
def probe():
    rng = np.random.default_rng(1)
    return {"pooled/a": rng.normal(size=(5, 6)) * 3, "pooled/b": rng.normal(size=(5, 3))}


def fitted(features, shift: float = 0.0) -> MahalanobisDetector:
    return MahalanobisDetector().fit({k: v + shift for k, v in features.items()})


def meta(manifest, threshold: float, **extra) -> dict:
    return {"model_sha256": manifest.model_sha256, "model_id": manifest.model_id, "detector": "mahalanobis",
            "n_train": 24, "threshold": threshold, **extra}


def test_empty_store(tmp_path, manifest):
    store = DetectorStore(tmp_path)
    assert store.history() == []
    assert store.current_path() is None
    assert store.load_current(manifest) is None
    with pytest.raises(StoreError, match="no earlier detector"):
        store.rollback(manifest)


def test_save_makes_it_current_and_loads_back(tmp_path, manifest, features, probe):
    store = DetectorStore(tmp_path)
    det = fitted(features)
    path = store.save_loaded(det, meta(manifest, 2.5))
    assert path.parent == tmp_path / "detectors"
    assert path.name.endswith("-mahalanobis-n24.edet")
    assert store.history() == [path]
    assert store.current_path() == path
    assert json.loads((tmp_path / "detectors" / "current.json").read_text()) == {"file": path.name, "previous": []}
    loaded = store.load_current(manifest)
    assert loaded is not None
    assert loaded.metadata["threshold"] == 2.5 and loaded.metadata["model_id"] == manifest.model_id
    np.testing.assert_allclose(loaded.detector.score_samples(probe), det.score_samples(probe), rtol=1e-12)


def test_save_of_a_real_fit_result(tmp_path, manifest, features):
    settings = FitSettings(detector="mahalanobis", factor=0, max_folds=4)
    result = fit_features(features, 24, settings)
    store = DetectorStore(tmp_path)
    path = store.save(result, settings, manifest)
    loaded = store.load_current(manifest)
    assert store.current_path() == path
    assert loaded.metadata["threshold"] == pytest.approx(result.threshold)
    assert loaded.metadata["n_train"] == 24 and loaded.metadata["model_sha256"] == manifest.model_sha256
    assert len(loaded.metadata["loo_scores"]) == 24


def test_newer_saves_become_current(tmp_path, manifest, features):
    store = DetectorStore(tmp_path)
    paths = [store.save_loaded(fitted(features, i), meta(manifest, float(i))) for i in range(3)]
    assert store.history() == paths  # oldest first
    assert len(set(paths)) == 3
    assert store.current_path() == paths[-1]
    assert store.load_current(manifest).metadata["threshold"] == 2.0


def test_rollback_goes_to_the_previous_file_then_refuses(tmp_path, manifest, features, probe):
    store = DetectorStore(tmp_path)
    first_det = fitted(features)
    first = store.save_loaded(first_det, meta(manifest, 1.0))
    second = store.save_loaded(fitted(features, 5.0), meta(manifest, 2.0))
    assert store.rollback(manifest) == first
    assert store.current_path() == first
    loaded = store.load_current(manifest)
    assert loaded.metadata["threshold"] == 1.0
    np.testing.assert_allclose(loaded.detector.score_samples(probe), first_det.score_samples(probe))
    assert second.is_file()  # rollback keeps the newer file
    with pytest.raises(StoreError, match="no earlier detector fitted for this model"):
        store.rollback(manifest)
    assert store.current_path() == first  # a refused rollback changes nothing


def test_save_after_rollback_is_current(tmp_path, manifest, features):
    store = DetectorStore(tmp_path)
    store.save_loaded(fitted(features), meta(manifest, 1.0))
    store.save_loaded(fitted(features), meta(manifest, 2.0))
    store.rollback(manifest)
    third = store.save_loaded(fitted(features), meta(manifest, 3.0))
    assert store.current_path() == third
    assert store.load_current(manifest).metadata["threshold"] == 3.0


def test_rollback_skips_a_detector_for_another_model(tmp_path, manifest, features):
    store = DetectorStore(tmp_path)
    other = store.save_loaded(fitted(features), meta(manifest, 1.0, model_sha256="0" * 64, model_id="other@000"))
    good = store.save_loaded(fitted(features), meta(manifest, 2.0))
    store.save_loaded(fitted(features), meta(manifest, 3.0))
    assert store.rollback(manifest) == good
    with pytest.raises(StoreError):
        store.rollback(manifest)  # only `other` is older, and it is for another model
    assert other.is_file() and store.current_path() == good


def test_prune_keeps_the_newest(tmp_path, manifest, features):
    store = DetectorStore(tmp_path, keep=3)
    paths = [store.save_loaded(fitted(features), meta(manifest, float(i))) for i in range(5)]
    assert store.history() == paths[-3:]
    assert not paths[0].exists() and not paths[1].exists()
    assert store.current_path() == paths[-1]
    assert sorted(p.name for p in store.dir.iterdir()) == sorted([p.name for p in paths[-3:]] + ["current.json"])


def test_keep_one_leaves_nothing_to_roll_back_to(tmp_path, manifest, features):
    store = DetectorStore(tmp_path, keep=1)
    store.save_loaded(fitted(features), meta(manifest, 1.0))
    last = store.save_loaded(fitted(features), meta(manifest, 2.0))
    assert store.history() == [last]
    with pytest.raises(StoreError):
        store.rollback(manifest)


def test_detector_for_another_model_is_refused(tmp_path, manifest, features):
    store = DetectorStore(tmp_path)
    store.save_loaded(fitted(features), meta(manifest, 1.0))
    other = dataclasses.replace(manifest, model_sha256="f" * 64)
    with pytest.raises(DetectorFileError, match=r"was fitted for model .*but the loaded feature model is .*refit"):
        store.load_current(other)
    assert store.load_current(manifest) is not None


def test_corrupted_detector_file_is_refused(tmp_path, manifest, features):
    store = DetectorStore(tmp_path)
    path = store.save_loaded(fitted(features), meta(manifest, 1.0))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DetectorFileError, match="corrupted"):
        store.load_current(manifest)


@pytest.mark.parametrize(
    "pointer",
    [
        "",
        '{"file": "2026',  # cut short by a power cut
        "not json",
        '["a.edet"]',
        '{"other": "a.edet"}',
        '{"file": "19990101T000000000000Z-gone-n5.edet"}',  # names a file that is not there
        '{"file": 5}',
    ],
)
def test_unusable_pointer_means_no_current_detector(tmp_path, manifest, features, pointer):
    store = DetectorStore(tmp_path)
    store.save_loaded(fitted(features), meta(manifest, 1.0))
    (store.dir / "current.json").write_text(pointer)
    assert store.current_path() is None
    assert store.load_current(manifest) is None


# --- history is ordered by a counter, never by the wall clock (a Pi has no RTC: the clock can jump back) ---


class _Clock:
    """Stands in for the store's ``datetime`` module: ``now`` returns the given times in turn."""

    def __init__(self, *times: str) -> None:
        self._times = iter(times)
        self.timezone = _dt.timezone
        clock = self

        class _Datetime(_dt.datetime):
            @classmethod
            def now(cls, tz=None):
                return _dt.datetime.fromisoformat(next(clock._times)).replace(tzinfo=_dt.timezone.utc)

        self.datetime = _Datetime


def test_rollback_after_the_clock_jumped_back_goes_to_the_previous_fit(tmp_path, manifest, features, monkeypatch):
    monkeypatch.setattr(store_module, "dt", _Clock("2026-03-01T08:00:00", "2025-01-01T00:00:05"))
    store = DetectorStore(tmp_path)
    first = store.save_loaded(fitted(features), meta(manifest, 1.0))
    second = store.save_loaded(fitted(features), meta(manifest, 2.0))  # after a reboot without NTP
    assert store.current_path() == second
    assert store.rollback(manifest) == first  # was: StoreError "no earlier detector"
    assert store.history() == [first, second]
    assert store.load_current(manifest).metadata["threshold"] == 1.0


def test_prune_after_the_clock_jumped_back_keeps_the_newest_fits(tmp_path, manifest, features, monkeypatch):
    times = ["2026-03-01T08:00:00", "2026-03-01T09:00:00", "2025-01-01T00:00:05", "2025-01-01T00:00:06",
             "2025-01-01T00:00:07"]
    monkeypatch.setattr(store_module, "dt", _Clock(*times))
    store = DetectorStore(tmp_path, keep=3)
    paths = [store.save_loaded(fitted(features), meta(manifest, float(i))) for i in range(5)]
    assert [p.exists() for p in paths] == [False, False, True, True, True]  # was: the newest fits deleted
    assert store.history() == paths[-3:]
    assert store.current_path() == paths[-1]
    assert store.rollback(manifest) == paths[-2]


def test_new_names_start_with_a_counter(tmp_path, manifest, features):
    store = DetectorStore(tmp_path)
    names = [store.save_loaded(fitted(features), meta(manifest, float(i))).name for i in range(3)]
    assert [n.split("-")[0] for n in names] == ["000001", "000002", "000003"]
    store.rollback(manifest)
    assert store.save_loaded(fitted(features), meta(manifest, 9.0)).name.startswith("000004-")


def test_counter_continues_past_six_digits(tmp_path, manifest, features):
    store = DetectorStore(tmp_path)
    big = store.save_loaded(fitted(features), meta(manifest, 1.0))
    big = big.rename(big.with_name("999999" + big.name[6:]))
    store._point(big, [])
    after = store.save_loaded(fitted(features), meta(manifest, 2.0))
    assert after.name.startswith("1000000-")
    assert store.history() == [big, after]  # by number, not by name
    assert store.rollback(manifest) == big


def test_files_from_before_the_counter_load_and_count_as_older(tmp_path, manifest, features):
    """A device that upgrades: its stamp-only files keep their order and rollback reaches them."""
    store = DetectorStore(tmp_path, keep=4)
    store.dir.mkdir(parents=True)
    old = []
    for i, stamp in enumerate(["20260301T080000000000Z", "20260302T080000000000Z"]):
        path = store.dir / f"{stamp}-mahalanobis-n24.edet"
        save_detector(path, fitted(features), meta(manifest, 10.0 + i))
        old.append(path)
    (store.dir / "current.json").write_text(json.dumps({"file": old[-1].name}) + "\n")  # as the old version wrote
    assert store.history() == old and store.load_current(manifest).metadata["threshold"] == 11.0
    new = store.save_loaded(fitted(features), meta(manifest, 1.0))  # the clock says 2026 or 1970: no matter
    assert new.name.startswith("000001-")
    assert store.history() == [*old, new]
    assert store.rollback(manifest) == old[1]
    assert store.rollback(manifest) == old[0]
    newer = [store.save_loaded(fitted(features), meta(manifest, 2.0 + i)) for i in range(2)]
    assert store.history() == [old[1], new, *newer]  # pruning removes the oldest stamp-only file first
    assert not old[0].exists()


def test_a_second_rollback_after_a_threshold_change_does_not_bring_back_the_rejected_fit(tmp_path, manifest,
                                                                                          features):
    """Five fits; roll back to 4; move the threshold (saved as 6, from 4); roll back: 4 again, not the rejected 5."""
    store = DetectorStore(tmp_path, keep=10)
    fits = [store.save_loaded(fitted(features, i), meta(manifest, float(i))) for i in range(1, 6)]
    assert store.rollback(manifest) == fits[3]
    moved = store.save_loaded(store.load_current(manifest).detector, meta(manifest, 9.0))
    assert store.current_path() == moved
    assert store.rollback(manifest) == fits[3]
    assert store.load_current(manifest).metadata["threshold"] == 4.0
    assert store.rollback(manifest) == fits[2]


def test_a_pointer_from_before_the_history_rolls_back_by_file_order(tmp_path, manifest, features):
    store = DetectorStore(tmp_path)
    first = store.save_loaded(fitted(features), meta(manifest, 1.0))
    second = store.save_loaded(fitted(features, 1.0), meta(manifest, 2.0))
    (store.dir / "current.json").write_text(json.dumps({"file": second.name}) + "\n")  # as older versions wrote it
    assert store.rollback(manifest) == first


def test_a_detector_keeps_its_training_picture_and_pruning_removes_it(tmp_path, manifest, features):
    store = DetectorStore(tmp_path, keep=2)
    first = store.save_loaded(fitted(features), meta(manifest, 1.0), b"\xff\xd8first")
    assert store.picture(first) == b"\xff\xd8first"
    plain = store.save_loaded(fitted(features), meta(manifest, 2.0))
    assert store.picture(plain) is None and store.picture(None) is None  # a fit without one (the CLI's)
    store.save_loaded(fitted(features), meta(manifest, 3.0), b"\xff\xd8third")
    assert not first.exists() and not first.with_suffix(".jpg").exists()  # pruned with its detector
    assert sorted(p.suffix for p in store.dir.iterdir()) == [".edet", ".edet", ".jpg", ".json"]
