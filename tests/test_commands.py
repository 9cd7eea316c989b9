"""Commands from anyone who can publish on the command topics: what they may and may not make the camera do."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edge_agent.commands import Commands, ThresholdChange, allowed_folder, parse_retrain, parse_threshold
from edge_agent.config import MAX_RETRAIN_IMAGES


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    allowed = tmp_path / "good_parts"
    (allowed / "shift-a").mkdir(parents=True)
    secret = tmp_path / "elsewhere" / "broken_large"
    secret.mkdir(parents=True)
    return allowed, secret


def test_retrain_folders_only_under_the_configured_roots(roots: tuple[Path, Path]) -> None:
    allowed, secret = roots
    assert allowed_folder(str(allowed / "shift-a"), [str(allowed)]) == str((allowed / "shift-a").resolve())
    (allowed / "escape").symlink_to(secret)  # a link inside the root that points out of it
    attempts = [str(secret), str(allowed / ".." / "elsewhere" / "broken_large"), str(allowed / "escape"),
                str(allowed / "missing"), str(allowed.parent / "no" / "such")]
    messages = set()
    for folder in attempts:
        with pytest.raises(ValueError) as err:
            allowed_folder(folder, [str(allowed)])
        messages.add(str(err.value))
    # One answer for outside, escaping, missing and nonexistent: a refusal tells nothing about what exists.
    assert messages == {"folder is not an existing folder under [retrain] folders"}
    assert "secret" not in next(iter(messages)) and "broken" not in next(iter(messages))


def test_relative_paths_and_an_empty_root_list_are_refused(roots: tuple[Path, Path]) -> None:
    allowed, _ = roots
    cwd = os.getcwd()
    os.chdir(allowed)
    try:
        with pytest.raises(ValueError, match="absolute path"):
            allowed_folder("shift-a", [str(allowed)])
    finally:
        os.chdir(cwd)
    with pytest.raises(ValueError, match="none is configured"):
        allowed_folder(str(allowed / "shift-a"), [])


@pytest.mark.parametrize("n", [1, 100_000_000, MAX_RETRAIN_IMAGES + 1, True, "10", 2.5])
def test_n_images_is_bounded(n: Any) -> None:
    with pytest.raises(ValueError, match=f"from 2 to {MAX_RETRAIN_IMAGES}"):
        parse_retrain({"n_images": n}, 10, [])


def test_a_fixed_threshold_far_from_the_good_scores_needs_force() -> None:
    meta = {"loo_scores": [1.0, 1.2, 1.5], "threshold": 1.8, "sensitivity": 0.5, "quantile": 0.99, "margin": 0.1,
            "threshold_method": "lognormal", "threshold_override": None}
    for value in (1e308, 1e-9, 0.0):
        with pytest.raises(ValueError, match='"force": true'):
            parse_threshold({"value": value}).apply(meta)
    assert parse_threshold({"value": 1e308, "force": True}).apply(meta)["threshold"] == 1e308
    assert parse_threshold({"value": 2.0}).apply(meta)["threshold"] == 2.0  # near the good parts: no force needed
    with pytest.raises(ValueError, match="force must be true or false"):
        parse_threshold({"value": 2.0, "force": "yes"})
    assert ThresholdChange(sensitivity=1.0).apply(meta)["threshold_override"] is None


SCORES = [float(i) for i in range(1, 20)]  # 19 good parts' leave-one-out scores: 1 .. 19


def test_a_false_reject_target_recalibrates_from_the_stored_scores() -> None:
    meta = {"loo_scores": SCORES, "threshold": 25.0, "target_false_reject": 0.005, "sensitivity": 0.5,
            "threshold_method": "lognormal", "threshold_override": 25.0,
            "threshold_settings": {"target_false_reject": 0.005, "sensitivity": 0.5, "method": "lognormal",
                                   "override": None}}
    new = parse_threshold({"target_false_reject": 0.1}).apply(meta)
    assert new["threshold"] == 18.0  # ceil(20 * 0.9) = 18th smallest of 19
    assert (new["target_false_reject"], new["threshold_guarantee"], new["threshold_override"]) == (0.1, "conformal", None)
    assert new["threshold_settings"] == meta["threshold_settings"]  # a command leaves what [threshold] set
    # The knob then moves that target: 0.1 * 10 ** (2 * 0.7 - 1) = 0.251, ceil(20 * 0.749) = 15th smallest.
    assert parse_threshold({"sensitivity": 0.7}).apply(new)["threshold"] == 15.0
    for bad, fragment in ((0, "above 0"), (0.5, "below 0.5"), (-0.01, "above 0"), ("1%", "must be a number"),
                          (True, "must be a number")):
        with pytest.raises(ValueError, match=fragment):
            parse_threshold({"target_false_reject": bad})
    with pytest.raises(ValueError, match="exactly one"):
        parse_threshold({"target_false_reject": 0.01, "sensitivity": 0.5})


def test_commands_on_a_detector_saved_with_quantile_and_margin() -> None:
    """No target recorded: its quantile/margin's translation (the old defaults: the default target)."""
    old = {"loo_scores": SCORES, "threshold": 21.0, "sensitivity": 0.5, "quantile": 0.99, "margin": 0.1,
           "threshold_method": "lognormal", "threshold_override": None}
    new = parse_threshold({"sensitivity": 1.0}).apply(old)
    assert new["effective_target_false_reject"] == pytest.approx(0.05)  # the default 0.005 x 10
    assert new["threshold_guarantee"] == "conformal" and new["threshold"] == 19.0  # ceil(20 * 0.95) = 19
    assert "quantile" not in new and "margin" not in new


class _Agent:
    """Only what `Commands` reads for ``status``: the real handler is checked, not an agent."""

    def state(self) -> dict[str, Any]:
        return {"status": "running"}


def test_a_command_token_is_required_when_configured() -> None:
    commands = Commands(_Agent(), token="s3cret-token")  # type: ignore[arg-type]
    for args in ({}, {"token": "wrong"}, {"token": 12}, {"token": "s3cret-token "}):
        with pytest.raises(PermissionError, match="missing or wrong token"):
            commands("status", args)
    with pytest.raises(PermissionError):
        commands("no-such-command", {})  # no hint about the command set without the token
    assert commands("status", {"token": "s3cret-token", "request_id": "a"}) == {"status": "running"}
    assert Commands(_Agent())("status", {}) == {"status": "running"}  # type: ignore[arg-type]
