"""The toy world end to end: written files, decord read-back, the exact scorer at scale, determinism, bad input."""
import json, re, shutil
from pathlib import Path

import numpy as np
import pytest

from fastvideo import toy

N_VIDEOS, N_IMAGES = 200, 40


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "data"
    merge = toy.make_dataset(out, n_videos=N_VIDEOS, n_images=N_IMAGES, seed=7, progress=False)
    items = json.loads((out / "data.json").read_text())
    clips = [toy.read_media(out / "media" / it["path"]) for it in items]
    return out, merge, items, clips


def chance(labels):
    "Expected accuracy of a permuted labelling: the sum of squared label frequencies."
    _, counts = np.unique(labels, return_counts=True)
    return float(((counts / counts.sum()) ** 2).sum())


def test_scorer_exact_on_generated_data(dataset):
    _, _, items, clips = dataset
    report = toy.score_many(clips, [it["cap"][0] for it in items])
    assert report["n"] == N_VIDEOS + N_IMAGES >= 200
    for key in ("color", "shape", "motion", "one_object", "mean"):
        assert report[key] == 1.0, (key, report)


def test_scorer_near_chance_on_shuffled_captions(dataset):
    _, _, items, clips = dataset
    captions = [it["cap"][0] for it in items]
    shuffled = [captions[i] for i in np.random.default_rng(0).permutation(len(captions))]
    report = toy.score_many(clips, shuffled)
    attrs = [toy.parse_caption(c) for c in captions]
    for key in ("color", "shape", "motion"):
        level = chance([a[key] for a in attrs])
        assert report[key] <= level + 0.10, (key, report[key], level)


def test_scorer_near_chance_on_noise(dataset):
    _, _, items, clips = dataset
    rng = np.random.default_rng(1)
    noise = [rng.integers(0, 256, c.shape, dtype=np.uint8) for c in clips[:100]]
    report = toy.score_many(noise, [it["cap"][0] for it in items[:100]])
    attrs = [toy.parse_caption(it["cap"][0]) for it in items[:100]]
    for key in ("color", "shape", "motion"):
        assert report[key] <= chance([a[key] for a in attrs]) + 0.10, (key, report)
    assert report["one_object"] <= 0.10


def test_decord_reads_what_was_written(dataset):
    import decord
    out, _, items, _ = dataset
    videos = [it for it in items if it["path"].endswith(".mp4")]
    assert len(videos) == N_VIDEOS
    for it in videos:
        vr = decord.VideoReader(str(out / "media" / it["path"]))
        h, w, _ = vr[0].shape
        assert len(vr) == it["num_frames"] == 19
        assert (w, h) == (it["resolution"]["width"], it["resolution"]["height"]) == (112, 64)
        assert vr.get_avg_fps() == pytest.approx(it["fps"]) and it["fps"] == 8.0


def test_json_items_have_seed_fields(dataset):
    out, merge, items, _ = dataset
    assert merge.read_text() == "media,data.json\n"  # relative to the merge file: the folder is portable
    for it in items:
        assert isinstance(it["path"], str) and (out / "media" / it["path"]).is_file()
        assert isinstance(it["cap"], list) and it["cap"] and all(isinstance(c, str) for c in it["cap"])
        toy.parse_caption(it["cap"][0])
        if it["path"].endswith(".mp4"):
            assert set(it["resolution"]) == {"width", "height"} and all(type(v) is int for v in it["resolution"].values())
            assert type(it["fps"]) is float and type(it["duration"]) is float and type(it["num_frames"]) is int
        else:
            assert it["path"].endswith(".jpg") and toy.parse_caption(it["cap"][0])["motion"] == "still"


def test_same_seed_same_dataset(tmp_path):
    a = toy.make_dataset(tmp_path / "a", n_videos=6, n_images=3, seed=11, progress=False).parent
    b = toy.make_dataset(tmp_path / "b", n_videos=6, n_images=3, seed=11, progress=False).parent
    c = toy.make_dataset(tmp_path / "c", n_videos=6, n_images=3, seed=12, progress=False).parent
    assert (a / "data.json").read_bytes() == (b / "data.json").read_bytes()
    assert (a / "data.json").read_bytes() != (c / "data.json").read_bytes()
    for it in json.loads((a / "data.json").read_text()):
        assert np.array_equal(toy.read_media(a / "media" / it["path"]), toy.read_media(b / "media" / it["path"]))


def test_items_do_not_depend_on_dataset_size(tmp_path):
    small = toy.make_dataset(tmp_path / "s", n_videos=2, n_images=1, seed=3, progress=False).parent
    large = toy.make_dataset(tmp_path / "l", n_videos=5, n_images=2, seed=3, progress=False).parent
    s, l = (json.loads((d / "data.json").read_text()) for d in (small, large))
    assert s[:2] == l[:2] and s[2] == l[5]


def test_cli_refuses_non_empty_folder_unless_overwrite(tmp_path, cli):
    out = tmp_path / "d"
    assert cli("toy-data", out, "--n_videos", "2", "--n_images", "1")[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in (out / "media").iterdir()}
    code, err = cli("toy-data", out, "--n_videos", "2")
    assert code != 0 and "not empty" in err and str(out) in err
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "media").iterdir()}, "refusal must not touch files"
    code, err = cli("toy-data", out, "--n_videos", "3", "--n_images", "0", "--overwrite")
    assert code == 0, err
    assert len(json.loads((out / "data.json").read_text())) == 3
    assert "toy data" in err  # the progress bar


def test_a_moved_or_copied_folder_reads_its_own_media(tmp_path):
    from fastvideo.data import read_items
    merge = toy.make_dataset(tmp_path / "orig", n_videos=2, n_images=1, seed=5, progress=False)
    shutil.copytree(tmp_path / "orig", tmp_path / "copy")
    (tmp_path / "orig").rename(tmp_path / "moved")
    for folder in ("moved", "copy"):
        items, errors = read_items(tmp_path / folder / merge.name)
        assert errors == [] and len(items) == 3, errors
        assert all(it.path.parent == (tmp_path / folder / "media").resolve() for it in items), [it.path for it in items]


@pytest.mark.parametrize("flag, value", [("--height", "50"), ("--width", "100"), ("--height", "0"), ("--fps", "0")])
def test_cli_refuses_sizes_preprocessing_cannot_use(tmp_path, flag, value, cli):
    code, err = cli("toy-data", tmp_path / "d", "--n_videos", "1", "--n_images", "0", flag, value)
    assert code == 2 and f"{flag}={value}" in err, err
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir()), "nothing written on a refusal"


@pytest.mark.parametrize("frames, expected", [
    (np.zeros((19, 64, 112), np.uint8), "shape (frames, height, width, 3)"),
    (np.zeros((64, 112, 3), np.uint8), "shape (frames, height, width, 3)"),
    (np.zeros((19, 64, 112, 3), np.float32), "uint8"),
    ([[0]], "uint8 numpy array"),
])
def test_score_rejects_bad_frames(frames, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        toy.score(frames, "a red circle moving left")


@pytest.mark.parametrize("caption", ["a red circle", "a purple circle moving left", "a red circle moving still",
                                     "a red circle staying left", "two red circles moving left", ""])
def test_score_rejects_captions_outside_grammar(caption):
    with pytest.raises(ValueError, match="outside the toy grammar"):
        toy.score(np.zeros((19, 64, 112, 3), np.uint8), caption)


@pytest.mark.filterwarnings("error")
def test_score_finds_no_object_in_a_bright_frame_without_warnings():
    frames = np.full((3, 64, 112, 3), 200, np.uint8)  # one component covering the whole frame, nothing behind it
    res = toy.score(frames, "a red circle moving left")
    assert res["one_object"] is False and res["mean"] == 0.0


def test_read_video_falls_back_to_pyav_where_decord_cannot_convert(tmp_path):
    frames = toy.render(toy.sample_spec(np.random.default_rng(0), num_frames=7, height=32, width=48))
    toy.write_mp4(tmp_path / "narrow.mp4", frames, 8.0)  # decord 0.6 fails on 48-px-wide RGB frames
    read, fps = toy.read_video(tmp_path / "narrow.mp4")
    assert read.shape == (7, 32, 48, 3) and fps == 8.0
    assert np.abs(read.astype(int) - frames).mean() < 3  # H.264 at crf 12: close to what was written


def test_object_sizes_narrow_the_world_and_object_size_measures_them(tmp_path):
    "A large-object data set (what the LoRA recipe trains on): every clip's measured object size in range, scorer exact."
    merge = toy.make_dataset(tmp_path / "big", n_videos=12, n_images=4, seed=5, object_sizes=(26, 30), progress=False)
    items = json.loads((merge.parent / "data.json").read_text())
    clips = [toy.read_media(merge.parent / "media" / it["path"]) for it in items]
    sizes = [toy.object_size(c) for c in clips]
    assert all(25.5 <= s <= 31 for s in sizes), sizes
    assert toy.score_many(clips, [it["cap"][0] for it in items])["mean"] == 1.0
    spec = toy.sample_spec(np.random.default_rng(0))  # the default draws are the world's, as before the option
    assert 14 <= spec.size <= 24 and abs(toy.object_size(toy.render(spec)) - spec.size) <= 1
    assert toy.object_size(np.zeros((3, 64, 112, 3), np.uint8)) is None
    with pytest.raises(ValueError, match=r"--object_sizes 20 40: expected 6 <= min <= max <= 30"):
        toy.make_dataset(tmp_path / "bad", object_sizes=(20, 40))
    assert not (tmp_path / "bad").exists(), "refused before writing"
