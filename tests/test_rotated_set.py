"""bench.rotated_set: a turned copy of a real data set, same layout, same images per folder, reproducible."""

import numpy as np

from bench.rotated_set import main
from edge_agent.offline.datasets import load_mvtec
from edge_agent.capture.images import read_image


def test_turned_copy_keeps_the_layout_and_is_reproducible(real_set, tmp_path):
    src = tmp_path / "src"
    defect_kind = real_set.defects[0].parent.name
    for sub, paths in (("train/good", real_set.train_good), ("test/good", real_set.test_good),
                       (f"test/{defect_kind}", real_set.defects)):
        (src / sub).mkdir(parents=True)
        for p in paths[:2]:
            (src / sub / p.name).write_bytes(p.read_bytes())
    assert main([str(src), str(tmp_path / "a")]) == 0
    assert main([str(src), str(tmp_path / "b")]) == 0
    before, after = load_mvtec(src), load_mvtec(tmp_path / "a")
    assert [p.name for p in after.train] == [p.name for p in before.train]
    assert list(after.test_labels) == list(before.test_labels)
    for old, new in zip(before.train + before.test, after.train + after.test):
        a, b = read_image(old), read_image(new)
        assert a.shape == b.shape and not np.array_equal(a, b)
        assert np.array_equal(b, read_image(tmp_path / "b" / new.relative_to(tmp_path / "a")))
