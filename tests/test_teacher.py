"""The shipped toy models against their bars, on every caption of the toy world from seed 0 (90 videos each): the teacher
at 64 Euler steps and guidance 4.5, its distilled student toy-fast at 8 PCM steps and guidance 1. One seed keeps the
suite inside its budget; the lessons and bench/distill_quality.py report both seeds (0 and 1: teacher 0.946, student 0.911)."""
import json

import pytest

from fastvideo import sampling, toy
from fastvideo.config import preset

ATTRIBUTES = ("color", "shape", "motion", "one_object")
STUDENT_FLOOR = 0.89  # toy-fast (fp16, as shipped) at 8 PCM steps, guidance 1, seed 0: measured 0.914


@pytest.fixture(scope="module")
def scores():
    s = sampling.toy_scores("toy", seeds=(0,), progress=False)
    assert s["n"] == 90
    return s


def test_teacher_draws_colour_motion_and_one_object(scores):
    "What the shipped teacher does today (seed 0: 1.0 each, shape 0.789, mean 0.947): a floor under it, not the bar."
    assert all(scores[k] >= 0.95 for k in ("color", "motion", "one_object")), scores
    assert scores["mean"] >= 0.90 and scores["shape"] >= 0.75, scores


@pytest.mark.xfail(strict=True, reason="issue 12: the teacher's squares have soft corners (shape 0.789 < 0.85)")
def test_teacher_meets_the_bar(scores):
    "The issue's bar: mean >= 0.90 and every attribute >= 0.85. Strict: a teacher that meets it makes this fail until the mark goes."
    assert scores["mean"] >= 0.90 and all(scores[k] >= 0.85 for k in ATTRIBUTES), scores


def test_shipped_teacher_has_the_toy_presets_config():
    config = json.loads((toy.model_path() / "transformer" / "config.json").read_text())
    assert {k: config[k] for k in vars(preset("toy").dit)} == vars(preset("toy").dit)


@pytest.fixture(scope="module")
def student_scores():
    s = sampling.toy_scores("toy-fast", seeds=(0,), num_inference_steps=8, guidance_scale=1.0,
                            scheduler_type="pcm_linear_quadratic", progress=False)
    assert s["n"] == 90
    return s


def test_shipped_student_samples_in_8_passes(student_scores):
    "toy-fast at 8 PCM steps and guidance 1 (8 DiT passes against the teacher's 128): a floor under what ships."
    assert student_scores["mean"] >= STUDENT_FLOOR, student_scores


def test_shipped_student_meets_the_bar(student_scores, scores):
    "The issue's bar for a guidance-distilled student: at 8 steps and guidance 1, >= 0.95 x the teacher at 64 steps."
    assert student_scores["mean"] >= 0.95 * scores["mean"], (student_scores, scores)


def test_shipped_student_folder_shares_the_teachers_parts():
    fast, teacher = toy.model_path("toy-fast"), toy.model_path()
    for part in ("vae", "text_encoder", "tokenizer"):
        assert (fast / part).resolve() == (teacher / part).resolve(), part
    config = json.loads((fast / "transformer" / "config.json").read_text())
    assert {k: config[k] for k in vars(preset("toy").dit)} == vars(preset("toy").dit)
    assert json.loads((fast / "distill_config.json").read_text())["distill_cfg"] > 0, "guidance is distilled in"


def test_toy_model_names():
    assert toy.model_path() == toy.model_path("toy") and toy.model_path("toy-fast").name == "toy_fast"
    with pytest.raises(ValueError, match="unknown toy model 'toy-slow'; expected one of toy, toy-fast"):
        toy.model_path("toy-slow")
