"""The shipped toy teacher against its bar, on every caption of the toy world (64 Euler steps, guidance 4.5, 90 x 2)."""
import json

import pytest

from fastvideo import sampling, toy
from fastvideo.config import preset

ATTRIBUTES = ("color", "shape", "motion", "one_object")


@pytest.fixture(scope="module")
def scores():
    s = sampling.toy_scores("toy", seeds=(0, 1), progress=False)
    assert s["n"] == 180
    return s


def test_teacher_draws_colour_motion_and_one_object(scores):
    "What the shipped teacher does today (measured 1.0 each, shape 0.783, mean 0.946): a floor under it, not the bar."
    assert all(scores[k] >= 0.95 for k in ("color", "motion", "one_object")), scores
    assert scores["mean"] >= 0.90 and scores["shape"] >= 0.75, scores


@pytest.mark.xfail(strict=True, reason="issue 12: the teacher's squares have soft corners (shape 0.783 < 0.85)")
def test_teacher_meets_the_bar(scores):
    "The issue's bar: mean >= 0.90 and every attribute >= 0.85. Strict: a teacher that meets it makes this fail until the mark goes."
    assert scores["mean"] >= 0.90 and all(scores[k] >= 0.85 for k in ATTRIBUTES), scores


def test_shipped_teacher_has_the_toy_presets_config():
    config = json.loads((toy.model_path() / "transformer" / "config.json").read_text())
    assert {k: config[k] for k in vars(preset("toy").dit)} == vars(preset("toy").dit)
