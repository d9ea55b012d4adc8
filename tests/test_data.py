"""The preprocessing stage end to end: shapes, bad input, resume, torchrun, and the shipped toy VAE's quality."""
import json, os, re, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvideo import data, media, models, toy, toy_models

PY = sys.executable
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    "4 clips + 2 images, and a validation prompt file."
    root = tmp_path_factory.mktemp("toy")
    merge = toy.make_dataset(root / "d", n_videos=4, n_images=2, seed=3, progress=False)
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle moving left\n\na blue square staying still\n")
    return merge, prompts


@pytest.fixture(scope="module")
def reference(toy_data, tmp_path_factory):
    "One in-process preprocessing run that other tests compare against."
    merge, prompts = toy_data
    out = tmp_path_factory.mktemp("ref") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun runs each rank (OMP_NUM_THREADS=1), so summation orders match exactly
    try: summary = data.preprocess(merge, out, "toy", validation_prompts=prompts, progress=False)
    finally: torch.set_num_threads(threads)
    return out, summary


def _load(out, rel): return torch.load(Path(out) / rel)


def test_preprocess_shapes(reference):
    out, summary = reference
    assert summary["items"] == 6 and summary["encoded"] == 6 and summary["failed"] == 0
    entries = json.loads((out / "videos2caption.json").read_text())
    assert len(entries) == 6
    for e in entries:
        for k in ("latent_path", "prompt_embed_path", "prompt_attention_mask"): assert (out / e[k]).is_file()
        posterior = _load(out, e["latent_path"])
        frames = 1 if e["is_image"] else 4  # 19 frames -> (19 - 1) // 6 + 1
        assert posterior.shape == (2, 12, frames, 8, 14) and e["length"] == frames
        assert data.sample_latents(posterior).shape == (12, frames, 8, 14)
        assert (posterior[1] > 0).all()  # the std
        assert _load(out, e["prompt_embed_path"]).shape == (16, 32)
        mask = _load(out, e["prompt_attention_mask"])
        assert mask.dtype == torch.bool and mask.shape == (16,) and mask.sum() == len(e["caption"].split()) + 1
    val = json.loads((out / "validation" / "prompts.json").read_text())
    assert [v["caption"] for v in val] == ["a red circle moving left", "a blue square staying still"]
    assert all((out / v["prompt_embed_path"]).is_file() for v in val)
    assert json.loads((out / "errors.json").read_text()) == []


def test_command_line(toy_data, reference, tmp_path):
    "The `fastvideo preprocess` console script writes the same json as the in-process run."
    merge, _ = toy_data
    module = [str(BIN / "fastvideo"), "preprocess"]
    assert "--data_merge_path" in subprocess.run([*module, "--help"], env=ENV, capture_output=True, text=True, timeout=60).stdout
    out = tmp_path / "out"
    r = subprocess.run([*module, "--data_merge_path", str(merge), "--output_dir", str(out), "--model_path", "toy"],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "videos2caption.json").read_text()) == json.loads((reference[0] / "videos2caption.json").read_text())
    bad = subprocess.run([*module, "--data_merge_path", str(merge), "--output_dir", str(tmp_path / "x"),
                          "--model_path", "toy", "--num_frames", "20"], env=ENV, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--num_frames=20 breaks the Mochi VAE rule" in bad.stderr


@pytest.mark.parametrize("flags, message", [
    (dict(num_frames=20), "--num_frames=20 breaks the Mochi VAE rule"),
    (dict(height=60), "--height=60 is not a positive multiple of 16"),
    (dict(width=100), "--width=100 is not a positive multiple of 16"),
])
def test_bad_flags(toy_data, tmp_path, flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        data.preprocess(toy_data[0], tmp_path / "out", "toy", progress=False, **flags)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_bad_items(toy_data, tmp_path):
    "Each broken input is reported with the item and field; every good item is still written."
    media = toy_data[0].parent / "media"
    src = tmp_path / "src"; src.mkdir()
    for name in ("video_00000.mp4", "video_00001.mp4", "image_00000.jpg"): shutil.copy(media / name, src / name)
    (src / "corrupt.mp4").write_bytes((media / "video_00002.mp4").read_bytes()[:400])
    toy.write_mp4(src / "short.mp4", toy.render(toy.item_spec(9, 0, False, num_frames=7)), fps=8.0)
    items = [{"path": "video_00000.mp4", "cap": ["a red circle moving left"]},
             {"path": "image_00000.jpg", "cap": ["a red circle staying still"]},
             {"path": "corrupt.mp4", "cap": ["x"]},
             {"path": "missing.mp4", "cap": ["x"]},
             {"path": "video_00001.mp4"},
             {"path": "video_00001.mp4", "cap": 5},
             {"path": "short.mp4", "cap": ["x"]}]
    (src / "data.json").write_text(json.dumps(items))
    merge = tmp_path / "merge.txt"
    merge.write_text("src,src/data.json\nthis line has no comma\nsrc,nowhere.json\n")
    out = tmp_path / "out"
    summary = data.preprocess(merge, out, "toy", progress=False)
    errors = json.loads((out / "errors.json").read_text())
    got = {(e["item"].split(" (")[0].split("/")[-1], e["field"]) for e in errors}
    assert got == {("merge.txt:2", "line"), ("merge.txt:3", "json"), ("data.json item 2", "path"),
                   ("data.json item 3", "path"), ("data.json item 4", "cap"), ("data.json item 5", "cap"),
                   ("data.json item 6", "path")}, errors
    reasons = {e["item"].split(" (")[0].split("/")[-1]: e["reason"] for e in errors}
    assert "cannot read video" in reasons["data.json item 2"] and "corrupt.mp4" in reasons["data.json item 2"]
    assert "does not exist" in reasons["data.json item 3"]
    assert "missing" in reasons["data.json item 4"] and "found 5" in reasons["data.json item 5"]
    assert "clip too short: short.mp4 has 7 frames" in reasons["data.json item 6"]
    entries = json.loads((out / "videos2caption.json").read_text())
    assert sorted(Path(e["media_path"]).name for e in entries) == ["image_00000.jpg", "video_00000.mp4"]
    assert summary["failed"] == 7


def test_resume_after_crash(toy_data, reference, tmp_path, monkeypatch):
    "A run that dies after 3 items, then a rerun: the rerun encodes only the other 3 and rewrites nothing."
    merge, _ = toy_data
    out, real, calls = tmp_path / "out", data.encode_item, []

    def dies_after_3(*args, **kwargs):
        if len(calls) == 3: raise KeyboardInterrupt("killed")
        calls.append(args[1].key)
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "encode_item", dies_after_3)
    with pytest.raises(KeyboardInterrupt): data.preprocess(merge, out, "toy", progress=False)
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    assert len(first) == 9 and not (out / "videos2caption.json").exists()
    (out / "latent" / ".half-written.pt.tmp").write_bytes(b"junk")  # what a kill mid-write leaves: ignored

    again = []
    monkeypatch.setattr(data, "encode_item", lambda *a, **k: again.append(a[1].key) or real(*a, **k))
    summary = data.preprocess(merge, out, "toy", progress=False)
    assert len(again) == 3 and not set(again) & set(calls)
    assert summary["done_before"] == 3 and summary["encoded"] == 3
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    assert (out / "videos2caption.json").read_text() == (reference[0] / "videos2caption.json").read_text()


def test_torchrun_two_processes(toy_data, reference, tmp_path):
    "2 ranks (gloo) write the same json and the same tensors as 1 process."
    merge, prompts = toy_data
    out = tmp_path / "out"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "fastvideo.data",
           "--data_merge_path", str(merge), "--output_dir", str(out), "--model_path", "toy", "--validation_prompts", str(prompts)]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = reference[0]
    entries = json.loads((out / "videos2caption.json").read_text())
    assert entries == json.loads((ref / "videos2caption.json").read_text())
    for e in entries:
        for k in ("latent_path", "prompt_embed_path", "prompt_attention_mask"):
            # bit-identical: the reference ran with one thread like each rank (2 threads differ by ~1.6e-4)
            assert torch.equal(_load(out, e[k]), _load(ref, e[k])), k
    assert (out / "parts" / "rank1-of-2.json").is_file()


def test_latent_dataset(reference):
    out = reference[0]
    ds = data.LatentDataset(out / "videos2caption.json", text_dropout=0.5, seed=7)
    twin = data.LatentDataset(out / "videos2caption.json", text_dropout=0.5, seed=7)  # another rank of the SP group
    drops = [ds.drops_text(i) for i in range(len(ds))]
    assert drops == [twin.drops_text(i) for i in range(len(ds))] and any(drops) and not all(drops)
    for i in range(len(ds)):
        a, b = ds[i], twin[i]
        assert torch.equal(a["latents"], b["latents"])
        if drops[i]: assert not a["prompt_attention_mask"].any() and not a["prompt_embeds"].any()
        else: assert a["prompt_attention_mask"].any()
    sampler = data.BucketBatchSampler(ds.latent_shapes, batch_size=3, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(ds)))
    assert all(len({ds.latent_shapes[i] for i in b}) == 1 for b in batches)
    batch = data.collate_latents([ds[i] for i in batches[0]])
    assert batch["index"].tolist() == batches[0]
    assert all(torch.equal(batch["latents"][k], ds[i]["latents"]) for k, i in enumerate(batches[0]))


def test_shipped_toy_vae_quality(tmp_path):
    "Held-out toy clips (a seed never trained on) through the shipped VAE: PSNR >= 28 dB, scorer >= 95%."
    from diffusers import AutoencoderKLMochi
    vae = AutoencoderKLMochi.from_pretrained(toy.model_path(), subfolder="vae").eval()
    assert (vae.config.latent_channels, vae.spatial_compression_ratio, vae.temporal_compression_ratio) == (12, 8, 6)
    merge = toy.make_dataset(tmp_path / "held", n_videos=16, n_images=0, seed=424242, progress=False)
    items = json.loads((merge.parent / "data.json").read_text())
    clips = [toy.read_media(merge.parent / "media" / it["path"]) for it in items]
    recon = [toy_models.vae_roundtrip(vae, c) for c in clips]
    psnr = np.mean([toy_models.psnr(data.resize_crop(r, 64, 112), data.resize_crop(c, 64, 112)) for r, c in zip(recon, clips)])
    scores = toy.score_many(recon, [it["cap"][0] for it in items])
    print(f"toy VAE on 16 held-out clips: PSNR {psnr:.2f} dB, scorer {scores}")
    assert psnr >= 28 and scores["mean"] >= 0.95


def test_sigkill_half_way_then_rerun_finishes_without_redoing(tmp_path):
    "A real kill (SIGKILL, no cleanup) part-way through a run; the rerun encodes only what was not finished."
    import signal, time
    merge = toy.make_dataset(tmp_path / "d", n_videos=40, n_images=0, seed=5, progress=False)
    out = tmp_path / "out"
    cmd = [PY, "-m", "fastvideo.data", "--data_merge_path", str(merge), "--output_dir", str(out), "--model_path", "toy"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    finished = lambda: [p for p in (out / "meta").glob("*.json") if not p.name.startswith(".")]  # not a kill's temporaries
    while time.time() < deadline and len(finished()) < 5: time.sleep(0.02)
    proc.send_signal(signal.SIGKILL); proc.wait(timeout=30)
    done = {p.name: p.stat().st_mtime_ns for p in finished()}
    assert 5 <= len(done) < 40, f"the kill should land part-way, found {len(done)} finished items"
    assert not (out / "videos2caption.json").exists()
    pending = next(it.key for it in data.read_items(merge)[0] if f"{it.key}.json" not in done)  # and plant what a kill can leave
    (out / "latent" / f".{pending}.pt.0123456789ab.pt").write_bytes(b"half-written")
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"({40 - len(done)} encoded now, {len(done)} done before)" in r.stderr
    assert all((out / "meta" / n).stat().st_mtime_ns == t for n, t in done.items()), "a finished item was redone"
    entries = json.loads((out / "videos2caption.json").read_text())
    assert len(entries) == 40 and all((out / e["latent_path"]).is_file() for e in entries)
    for e in entries:  # nothing half-written is listed (a kill can leave a hidden temp file, never a listed one)
        for k in ("latent_path", "prompt_embed_path", "prompt_attention_mask"): torch.load(out / e[k])
    left = [p for d in data._ITEM_FOLDERS for p in (out / d).iterdir() if p.name.startswith(".")]
    assert not left, f"the rerun should sweep away what the kill left half-written: {left}"


@pytest.mark.parametrize("flag, value", [("num_frames", 13), ("height", 32), ("width", 48), ("train_fps", 4.0),
                                         ("model_path", "other")])
def test_rerun_with_other_settings_is_refused(toy_data, reference, tmp_path, flag, value):
    "A rerun into the same --output_dir with different settings raises, naming the flag, and touches nothing."
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)  # a finished run with the default settings ('toy', 19 x 64 x 112, source fps)
    settings = json.loads((out / "preprocess_settings.json").read_text())
    assert settings == {"model_path": "toy", "num_frames": 19, "height": 64, "width": 112, "train_fps": None}
    if value == "other":  # a real model folder: a copy of the toy one
        value = tmp_path / "model"; shutil.copytree(toy.model_path(), value)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    kwargs = dict(model_path="toy", num_frames=19, height=64, width=112, train_fps=None) | {flag: value}
    model_path = kwargs.pop("model_path")
    with pytest.raises(ValueError) as e:
        data.preprocess(toy_data[0], out, model_path, progress=False, **kwargs)
    message = str(e.value)
    assert f"--{flag}" in message and str(settings[flag]) in message and str(value) in message and "--output_dir" in message
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written, nothing removed


def test_rerun_with_same_settings_resumes(toy_data, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    summary = data.preprocess(toy_data[0], out, "toy", num_frames=19, height=64, width=112, progress=False)
    assert summary["done_before"] == 6 and summary["encoded"] == 0


def test_bad_model_path_does_not_pin_settings(toy_data, tmp_path):
    "A typo in --model_path fails before the settings are written, so the corrected rerun is not refused."
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError): data.preprocess(toy_data[0], out, tmp_path / "nowhere", progress=False)
    assert not (out / "preprocess_settings.json").exists()


def test_narrow_video_falls_back_to_pyav(tmp_path):
    "decord 0.6 rejects 48 px wide frames ('size must exactly match'); load_clip reads them with PyAV instead."
    path = tmp_path / "narrow.mp4"
    frames = toy.render(toy.item_spec(1, 0, False, num_frames=13, height=32, width=48))
    toy.write_mp4(path, frames, fps=8.0)
    clip = data.load_clip(data.MediaItem(path, "x", False, None, "narrow"), 7, 32, 48)
    assert clip.shape == (3, 7, 32, 48)
    expected = data.resize_crop(media.read_video_av(path)[0][:7], 32, 48)
    assert torch.equal(clip, expected)
    clip = data.load_clip(data.MediaItem(path, "x", False, None, "narrow"), 4, 32, 48, train_fps=4.0)  # every 2nd frame
    assert torch.equal(clip, data.resize_crop(media.read_video_av(path)[0][[0, 2, 4, 6]], 32, 48))


@pytest.mark.parametrize("n_items, batch_size, replicas", [(3, 3, 4), (5, 2, 4), (7, 1, 3), (4, 2, 2), (0, 2, 2)])
def test_bucket_sampler_same_steps_on_every_rank(n_items, batch_size, replicas):
    "Fewer (or not divisible) batches than ranks: batches repeat from the start so every rank steps equally often."
    shapes = [(12, 4, 8, 14)] * n_items
    samplers = [data.BucketBatchSampler(shapes, batch_size, seed=1, num_replicas=replicas, rank=r) for r in range(replicas)]
    per_rank = [list(s) for s in samplers]
    counts = [len(b) for b in per_rank]
    assert len(set(counts)) == 1 and all(len(s) == c for s, c in zip(samplers, counts)), (counts, [len(s) for s in samplers])
    if n_items: assert counts[0] >= 1 and {i for b in per_rank for batch in b for i in batch} == set(range(n_items))


def test_saved_files_follow_the_umask(tmp_path, monkeypatch):
    "Files get the permissions open() would give (0o666 & ~umask), not a fixed 0o644."
    monkeypatch.setattr(media, "_UMASK", 0o027)
    data._save_new(tmp_path / "a.pt", torch.zeros(2))
    data._save_new(tmp_path / "b.json", {"x": 1})
    assert [(tmp_path / n).stat().st_mode & 0o777 for n in ("a.pt", "b.json")] == [0o640, 0o640]
    assert not list(tmp_path.glob(".*"))  # no temp file left


def test_encode_prompts_blank_uses_empty_prompt(monkeypatch):
    enc = models.load_encoders("toy")
    calls = []
    real = models.empty_prompt
    monkeypatch.setattr(models, "empty_prompt", lambda *a, **k: calls.append(a) or real(*a, **k))
    embeds, mask = models.encode_prompts(enc.text_encoder, enc.tokenizer, ["a red circle moving left", "  "],
                                       enc.max_sequence_length)
    assert calls and not embeds[1].any() and not mask[1].any() and mask[0].any()
    e0, m0 = data.encode_prompts(enc.text_encoder, enc.tokenizer, ["a red circle moving left"], enc.max_sequence_length)
    assert torch.equal(embeds[0], e0[0]) and torch.equal(mask[0], m0[0])


# ---- reliability: exit status, settings pinned late, plain errors, quiet decord, batched encoding ----

def _bad_sources(tmp_path, case):
    "A merge file from which no item can be used."
    merge = tmp_path / f"merge-{case}.txt"
    if case == "missing media folder":
        (tmp_path / "data.json").write_text("[]")
        merge.write_text(f"{tmp_path / 'no_such_folder'},{tmp_path / 'data.json'}\n")
    elif case == "unparsable json":
        (tmp_path / "media").mkdir(exist_ok=True); (tmp_path / "broken.json").write_text("[{\"path\": ")
        merge.write_text(f"{tmp_path / 'media'},{tmp_path / 'broken.json'}\n")
    else:  # every item bad
        (tmp_path / "media").mkdir(exist_ok=True); (tmp_path / "media" / "bad.mp4").write_bytes(b"\0" * 500)
        (tmp_path / "all_bad.json").write_text(json.dumps([{"path": "bad.mp4", "cap": ["x"]}, {"path": "gone.mp4", "cap": ["y"]}]))
        merge.write_text(f"{tmp_path / 'media'},{tmp_path / 'all_bad.json'}\n")
    return merge


@pytest.mark.parametrize("case", ["missing media folder", "unparsable json", "every item bad"])
def test_no_usable_item_raises_with_the_errors(tmp_path, case):
    "An empty output is an error that lists the problems; errors.json is written first; no settings are pinned."
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no usable item") as e: data.preprocess(_bad_sources(tmp_path, case), out, "toy", progress=False)
    errors = json.loads((out / "errors.json").read_text())
    assert errors and str(out / "errors.json") in str(e.value) and errors[0]["reason"] in str(e.value)
    assert not (out / "preprocess_settings.json").exists()


def test_no_usable_item_exits_nonzero(tmp_path):
    "`fastvideo preprocess` exits 2 with the reason on stderr (it exited 0 before)."
    r = subprocess.run([str(BIN / "fastvideo"), "preprocess", "--data_merge_path", str(_bad_sources(tmp_path, "unparsable json")),
                        "--output_dir", str(tmp_path / "out"), "--model_path", "toy"], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "no usable item" in r.stderr and "cannot parse" in r.stderr


def test_no_usable_item_under_torchrun_every_rank_fails(tmp_path):
    "2 ranks, nothing usable: the run exits non-zero with the reason, within the timeout (no rank hangs at a barrier)."
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "fastvideo.data", "--data_merge_path",
           str(_bad_sources(tmp_path, "every item bad")), "--output_dir", str(tmp_path / "out"), "--model_path", "toy"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode != 0 and "no usable item" in r.stderr, r.stderr[-3000:]  # torchrun may stop the other rank first


def _broken_model(tmp_path, part, how):
    model = tmp_path / "model"
    shutil.copytree(toy.model_path(), model)
    folder = model / part
    if how == "empty":
        shutil.rmtree(folder); folder.mkdir()
    elif how == "broken config": (folder / "config.json").write_text("{not json")
    else:  # truncated weights
        weights = next(f for f in folder.iterdir() if f.suffix == ".safetensors")
        weights.write_bytes(weights.read_bytes()[:100])
    return model


@pytest.mark.parametrize("part, how, expected", [("vae", "empty", "config.json"), ("vae", "broken config", "config.json"),
                                                 ("vae", "truncated weights", "diffusion_pytorch_model.safetensors"),
                                                 ("text_encoder", "truncated weights", "model.safetensors"),
                                                 ("tokenizer", "empty", "tokenizer.json")])
def test_broken_model_part_is_named(tmp_path, part, how, expected):
    "An empty or broken vae/ (text_encoder/, tokenizer/): the message names --model_path .../part and the files expected."
    model = _broken_model(tmp_path, part, how)
    with pytest.raises(ValueError) as e: data.load_encoders(model)
    assert f"--model_path {model / part}" in str(e.value) and expected in str(e.value), str(e.value)


def test_checks_before_pinning_settings(toy_data, tmp_path):
    "A failed run (broken vae/, other --num_frames) pins nothing, so the corrected rerun is accepted."
    out, model = tmp_path / "out", _broken_model(tmp_path, "vae", "empty")
    with pytest.raises(FileNotFoundError): data.preprocess(tmp_path / "no_merge.txt", out, "toy", num_frames=13, progress=False)
    assert not (out / "preprocess_settings.json").exists()
    with pytest.raises(ValueError, match="--model_path"): data.preprocess(toy_data[0], out, model, num_frames=13, progress=False)
    assert not (out / "preprocess_settings.json").exists()
    # settings left by an older run that wrote no item do not count either
    out.mkdir(exist_ok=True); (out / "preprocess_settings.json").write_text(json.dumps({"model_path": "elsewhere", "num_frames": 7}))
    summary = data.preprocess(toy_data[0], out, "toy", progress=False)
    assert summary["encoded"] == 6
    assert json.loads((out / "preprocess_settings.json").read_text())["num_frames"] == 19  # pinned with the first item


def test_output_dir_that_is_a_file(toy_data, tmp_path):
    path = tmp_path / "a_file"; path.write_text("x")
    with pytest.raises(ValueError, match=re.escape(f"--output_dir {path}")): data.preprocess(toy_data[0], path, "toy", progress=False)
    with pytest.raises(ValueError, match="is a file, not a folder"): data.preprocess(toy_data[0], path / "sub", "toy", progress=False)


def _truncated_mp4s(tmp_path):
    "A toy mp4 cut in half, as written (index at the end) and with the index first (faststart)."
    import av
    frames = toy.render(toy.item_spec(2, 0, False))
    toy.write_mp4(tmp_path / "whole.mp4", frames, fps=8.0)
    with av.open(str(tmp_path / "faststart.mp4"), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=8); s.width, s.height, s.pix_fmt, s.options = 112, 64, "yuv420p", {"bf": "0"}
        for f in frames: c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    paths = []
    for name in ("whole", "faststart"):
        b = (tmp_path / f"{name}.mp4").read_bytes()
        (tmp_path / f"{name}-half.mp4").write_bytes(b[:len(b) // 2]); paths.append(tmp_path / f"{name}-half.mp4")
    return paths


def test_truncated_mp4_reason_in_plain_words(tmp_path):
    for path in _truncated_mp4s(tmp_path):
        with pytest.raises(data.DataError) as e: data.load_clip(data.MediaItem(path, "x", False, 8.0, "cut"), 19, 64, 112)
        reason = e.value.record["reason"]
        assert f"cannot read video {path}: the file is damaged, truncated or not a video" in reason, reason
        assert "Check failed" not in reason and "Error reading" not in reason and ".cc:" not in reason, reason


def test_decord_fallbacks_are_quiet(tmp_path):
    "A narrow video (PyAV fallback) and truncated ones (skipped with a reason): nothing of decord's or FFmpeg's on stderr."
    narrow = tmp_path / "narrow.mp4"
    toy.write_mp4(narrow, toy.render(toy.item_spec(1, 0, False, num_frames=13, height=32, width=48)), fps=8.0)
    cut = _truncated_mp4s(tmp_path)
    script = f"""
from pathlib import Path
from fastvideo import data, toy
print(tuple(data.load_clip(data.MediaItem(Path({str(narrow)!r}), "x", False, None, "n"), 7, 32, 48).shape))
print(toy.read_video({str(narrow)!r})[0].shape)
for p in {[str(p) for p in cut]!r}:
    try: data.load_clip(data.MediaItem(Path(p), "x", False, 8.0, "cut"), 19, 64, 112)
    except data.DataError as e: print("skipped")
"""
    r = subprocess.run([PY, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:4] == ["(3, 7, 32, 48)", "(13, 32, 48, 3)", "skipped", "skipped"], r.stdout
    assert not re.search(r"decord|\.cc:\d+|moov atom|partial file|@ 0x|Check failed", r.stderr), r.stderr


def test_batched_encoding_matches_one_by_one(toy_data, reference, tmp_path):
    """--preprocess_batch_size 1 (one clip at a time, the old path), 3 and the default 8 on the same items:
    text embeddings and masks bit-identical; latents of any batch size >= 2 bit-identical to each other (a lone clip
    is encoded beside a copy of itself), and within 1e-5 (videos) / 5e-3 (images) of the one-by-one latents: oneDNN
    runs a different convolution kernel for batch 1 (measured max |diff| 6.2e-6 and 3.0e-3, for values up to ~1e2)."""
    merge = toy_data[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {b: data.preprocess(merge, tmp_path / f"b{b}", "toy", batch_size=b, progress=False) for b in (1, 3)}
    finally: torch.set_num_threads(threads)
    assert all(s["encoded"] == 6 for s in runs.values())
    outs = {1: tmp_path / "b1", 3: tmp_path / "b3", 8: reference[0]}
    entries = {b: json.loads((o / "videos2caption.json").read_text()) for b, o in outs.items()}
    assert entries[1] == entries[3] == entries[8]
    worst = {True: 0.0, False: 0.0}
    for e in entries[1]:
        for k in ("prompt_embed_path", "prompt_attention_mask"):
            assert torch.equal(_load(outs[1], e[k]), _load(outs[8], e[k])) and torch.equal(_load(outs[3], e[k]), _load(outs[8], e[k]))
        one, three, eight = (_load(outs[b], e["latent_path"]) for b in (1, 3, 8))
        assert torch.equal(three, eight)
        worst[e["is_image"]] = max(worst[e["is_image"]], (one - eight).abs().max().item())
    print(f"batched vs one-by-one latents: max |diff| videos {worst[False]:.3g}, images {worst[True]:.3g}")
    assert worst[False] <= 1e-5 and worst[True] <= 5e-3, worst
    with pytest.raises(ValueError, match="--preprocess_batch_size=0"): data.preprocess(merge, tmp_path / "x", "toy", batch_size=0)


def test_default_batch_size_fits_the_clip_size():
    "8 toy clips per encoder batch, but one Mochi clip (163 x 480 x 848): eight of those would not fit a GPU."
    assert data.auto_batch_size(19, 64, 112) == 8 and data.auto_batch_size(163, 480, 848) == 1
    import argparse
    sub = argparse.ArgumentParser().add_subparsers()
    assert data.add_preprocess(sub).get_default("preprocess_batch_size") is None
