"""Sampling equals diffusers' MochiPipeline on the toy folder; CFG, seeds, CLI outputs and bad input."""
import json, re, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastvideo import launch, sampling, toy

PROMPTS = ["a red circle moving left", "a white square staying still"]
SIZE = dict(num_frames=13, height=48, width=80)  # 3 latent frames, latent 6x10: small and H != W


@pytest.fixture(scope="module")
def pipe():
    return sampling.load_pipeline("toy")


def start_latents(seed=0, batch=2):
    return sampling.prepare_latents(batch, (12, 3, 6, 10), seed=seed)


@pytest.mark.parametrize("scheduler_type, steps, guidance", [("euler", 4, 4.5), ("euler", 3, 1.0)])
def test_generate_equals_diffusers_pipeline(pipe, scheduler_type, steps, guidance):
    from diffusers import MochiPipeline
    ref_pipe = MochiPipeline.from_pretrained(toy.model_path(), dtype=torch.float32)
    assert ref_pipe.config.force_zeros_for_empty_prompt, "the toy folder must follow the empty-prompt rule"
    latents = start_latents()
    ref = ref_pipe(PROMPTS, guidance_scale=guidance, num_inference_steps=steps, latents=latents.clone(),
                   max_sequence_length=pipe.max_sequence_length, output_type="np", **SIZE).frames
    ours = sampling.generate("toy", PROMPTS, num_inference_steps=steps, guidance_scale=guidance,
                             scheduler_type=scheduler_type, latents=latents.clone(), pipeline=pipe, progress=False, **SIZE)
    assert ours.shape == ref.shape == (2, 13, 48, 80, 3)
    assert np.abs(ours - ref).max() <= 1e-4, np.abs(ours - ref).max()


def test_guidance_one_equals_conditional_path(pipe):
    latents = start_latents(1)
    plain = sampling.generate("toy", PROMPTS, guidance_scale=1.0, num_inference_steps=3, latents=latents.clone(),
                              output_type="latent", pipeline=pipe, progress=False, **SIZE)
    # the batched (negative ; positive) path, combined with g = 1, must give the conditional prediction
    embeds, mask = sampling.encode(pipe, PROMPTS, guidance=True)
    schedule = sampling.make_schedule("euler", 3)
    forced = sampling.denoise(pipe.transformer, latents.clone(), embeds, mask, schedule, 1.0, force_guidance=True,
                              progress=False)
    # equal up to fp32 rounding: a batch of 4 runs other CPU kernels than a batch of 2, and u + (c - u) rounds
    assert torch.allclose(plain, forced, atol=2e-5, rtol=0), (plain - forced).abs().max()
    assert not torch.allclose(plain, sampling.denoise(pipe.transformer, latents.clone(), embeds, mask, schedule, 3.0,
                                                      progress=False), atol=1e-2), "guidance 3 must differ"



def test_fixed_seed_gives_identical_videos(pipe):
    kw = dict(num_inference_steps=2, scheduler_type="pcm_linear_quadratic", pipeline=pipe, progress=False, **SIZE)
    a = sampling.generate("toy", PROMPTS[0], seed=5, **kw)
    b = sampling.generate("toy", PROMPTS[0], seed=5, **kw)
    c = sampling.generate("toy", PROMPTS[0], seed=6, **kw)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def fastvideo(*args):
    return subprocess.run([str(Path(sys.executable).parent / "fastvideo"), *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_writes_videos_sheet_settings_and_resumes(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "out"
    args = ["sample", "--model_path", "toy", "--prompt_path", str(prompts), "--num_frames", "7", "--height", "32",
            "--width", "48", "--num_inference_steps", "2", "--scheduler_type", "pcm_linear_quadratic",
            "--output_path", str(out)]
    res = fastvideo(*args)
    assert res.returncode == 0, res.stderr
    videos = sorted(out.glob("*.mp4"))
    assert [v.name for v in videos] == ["000_a_red_circle_moving_left.mp4", "001_a_white_square_staying_still.mp4"]
    frames = toy.read_media(videos[0])
    assert frames.shape == (7, 32, 48, 3)
    assert (out / "contact_sheet.png").stat().st_size > 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["prompts"] == PROMPTS and settings["num_inference_steps"] == 2
    assert "sample" in res.stderr  # the progress bar
    stamps = [v.stat().st_mtime_ns for v in videos]
    res = fastvideo(*args)
    assert res.returncode == 0 and "2 of 2 videos exist" in res.stdout
    assert stamps == [v.stat().st_mtime_ns for v in videos], "existing videos must not be rewritten"


@pytest.mark.parametrize("kwargs, message", [
    (dict(height=60), "--height=60 is not a positive multiple of 16"),
    (dict(width=100), "--width=100 is not a positive multiple of 16"),
    (dict(num_frames=20), "--num_frames=20 breaks the Mochi VAE rule"),
    (dict(scheduler_type="ddim"), "unknown scheduler_type 'ddim'"),
])
def test_bad_settings_fail_before_loading(kwargs, message, monkeypatch):
    monkeypatch.setattr(sampling, "load_pipeline", lambda *a, **k: pytest.fail("loaded models before checking"))
    with pytest.raises(ValueError, match=message):
        sampling.generate("toy", PROMPTS[0], **kwargs)


def test_bad_model_folder_and_prompt_file(tmp_path, cli):
    (tmp_path / "m" / "vae").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="missing transformer/, text_encoder/, tokenizer/, scheduler/"):
        sampling.check_model_folder(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        sampling.check_model_folder(tmp_path / "nothing")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="holds no prompt"):
        sampling.read_prompts(prompt_path=empty)
    code, err = cli("sample", "--prompt_path", empty, "--output_path", tmp_path / "o")
    assert code == 2 and "holds no prompt" in err and str(empty) in err
    code, err = cli("sample", "--prompt", "x", "--scheduler_type", "ddim")
    assert code == 2 and "invalid choice: 'ddim'" in err


SP_WORKER = """
import sys, numpy as np, torch
from fastvideo import sampling
from fastvideo.distributed import init_distributed, destroy_distributed, is_main
init_distributed(int(sys.argv[2]))
try:
    latents = sampling.prepare_latents(2, (12, 3, 6, 10), seed=0)
    frames = sampling.generate("toy", %r, num_inference_steps=3, guidance_scale=4.5, latents=latents,
                               progress=False, num_frames=13, height=48, width=80)
    if is_main(): np.save(sys.argv[1], frames)
finally:
    destroy_distributed()
""" % (PROMPTS,)


def torchrun(nproc, *args):
    return launch.torchrun(list(args), nproc_per_node=nproc, timeout=240, capture=True)  # stderr into stdout


@pytest.mark.parametrize("nproc", [2, 4])
def test_generate_under_sequence_parallel_equals_one_process(pipe, tmp_path, nproc):
    script = tmp_path / "worker.py"
    script.write_text(SP_WORKER)
    res = torchrun(nproc, str(script), str(tmp_path / "sp.npy"), str(nproc))
    assert res.returncode == 0, res.stdout[-3000:]
    sp = np.load(tmp_path / "sp.npy")
    one = sampling.generate("toy", PROMPTS, num_inference_steps=3, guidance_scale=4.5,
                            latents=sampling.prepare_latents(2, (12, 3, 6, 10), seed=0), pipeline=pipe,
                            progress=False, num_frames=13, height=48, width=80)
    assert sp.shape == one.shape and np.abs(sp - one).max() <= 1e-4, np.abs(sp - one).max()


def test_cli_sample_on_two_processes(tmp_path, cli):
    args = ["sample", "--prompt", PROMPTS[0], "--num_frames", "7", "--height", "32", "--width", "64",
            "--num_inference_steps", "2"]
    res = torchrun(2, "--no-python", str(Path(sys.executable).parent / "fastvideo"), *args, "--sp_size", "2",
                   "--output_path", str(tmp_path / "sp"))
    assert res.returncode == 0, res.stdout[-3000:]
    assert res.stdout.count("videos, contact_sheet.png and settings.json in") == 1, res.stdout  # rank 0 alone closes
    assert [p.name for p in (tmp_path / "sp").glob("*.mp4")] == ["000_a_red_circle_moving_left.mp4"]
    assert json.loads((tmp_path / "sp" / "settings.json").read_text())["world_size"] == 2
    assert cli(*args, "--output_path", tmp_path / "one")[0] == 0
    sp, one = (toy.read_media(tmp_path / d / "000_a_red_circle_moving_left.mp4").astype(int) for d in ("sp", "one"))
    # the float frames agree to 1e-4 (test above); after uint8 rounding and H.264 only rare pixels may differ
    assert sp.shape == one.shape and np.abs(sp - one).mean() < 0.5, np.abs(sp - one).mean()


def test_sample_leaves_a_callers_process_group_alone(tmp_path, monkeypatch):
    "Inside a launched notebook the process group belongs to the notebook: sample() must not destroy it."
    import socket, torch.distributed as dist
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]  # free: tests may run side by side
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1"); monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        sampling.sample("toy", prompt=PROMPTS[0], output_path=tmp_path, num_frames=7, height=32, width=64,
                        num_inference_steps=1)
        assert dist.is_initialized(), "sample() destroyed the caller's process group"
    finally:
        if dist.is_initialized(): dist.destroy_process_group()


def test_torch_dtype_by_name():
    "`torch_dtype` as `fastvideo sample` passes it (a name) loads the same cached pipeline as the dtype itself."
    pipe = sampling.load_pipeline("toy", "bfloat16")
    assert pipe.dtype == torch.bfloat16 and pipe is sampling.load_pipeline("toy", torch.bfloat16)


TINY = dict(num_frames=7, height=32, width=48)


def test_rerun_with_other_settings_is_refused_not_mislabelled(tmp_path):
    "8 and 64 steps must never yield the same files: a video is kept only when its recorded settings match."
    out = tmp_path / "out"
    sampling.sample("toy", prompt=PROMPTS, output_path=out, num_inference_steps=2, **TINY)
    record = json.loads((out / "000_a_red_circle_moving_left.json").read_text())
    assert record["num_inference_steps"] == 2 and record["seed"] == 1024 and record["prompt"] == PROMPTS[0]
    assert json.loads((out / "001_a_white_square_staying_still.json").read_text())["seed"] == 1025
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    for change, message in [(dict(num_inference_steps=3), "num_inference_steps was 2, now 3"),
                            (dict(seed=7), "seed was 1024, now 7"), (dict(guidance_scale=1.0), "guidance_scale was 4.5, now 1.0"),
                            (dict(scheduler_type="pcm_linear_quadratic"), "scheduler_type was 'euler', now 'pcm_linear_quadratic'")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            sampling.sample("toy", prompt=PROMPTS, output_path=out, **(dict(num_inference_steps=2) | TINY | change))
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}, "a refusal must not touch the videos"
    settings = json.loads((out / "settings.json").read_text())
    assert settings["num_inference_steps"] == 2, "the record must still describe the videos"
    # --overwrite regenerates them, and the records follow
    sampling.sample("toy", prompt=PROMPTS, output_path=out, num_inference_steps=3, overwrite=True, **TINY)
    assert json.loads((out / "000_a_red_circle_moving_left.json").read_text())["num_inference_steps"] == 3
    assert all(stamps[p.name] != p.stat().st_mtime_ns for p in out.glob("*.mp4"))
    # a video from before the records existed has no record: refused too
    (out / "001_a_white_square_staying_still.json").unlink()
    with pytest.raises(ValueError, match="no record of the settings"):
        sampling.sample("toy", prompt=PROMPTS, output_path=out, num_inference_steps=3, **TINY)


def test_cli_refuses_other_steps_and_bad_values(tmp_path, cli):
    base = ["sample", "--prompt", PROMPTS[0], "--num_frames", "7", "--height", "32", "--width", "48",
            "--output_path", tmp_path / "o"]
    assert cli(*base, "--num_inference_steps", "2")[0] == 0
    code, err = cli(*base, "--num_inference_steps", "3")
    assert code == 2 and "num_inference_steps was 2, now 3" in err and "--overwrite" in err
    for flag, value, message in [("--guidance_scale", "-1", "--guidance_scale=-1.0 must be a number >= 0"),
                                 ("--guidance_scale", "nan", "--guidance_scale=nan must be a number >= 0")]:
        code, err = cli(*base, flag, value)
        assert code == 2 and message in err, err
    (tmp_path / "file").write_text("x")
    code, err = cli(*base[:-1], tmp_path / "file")
    assert code == 2 and f"--output_path {tmp_path / 'file'} is a file" in err, err
    with pytest.raises(ValueError, match="--guidance_scale=-0.5"):
        sampling.generate("toy", PROMPTS[0], guidance_scale=-0.5)


def test_contact_sheet_is_bounded_and_not_redrawn_for_nothing(tmp_path):
    from PIL import Image
    prompts = [f"a red circle moving left {i}" for i in range(sampling.CONTACT_SHEET_MAX + 4)]
    out = tmp_path / "many"
    sampling.sample("toy", prompt=prompts, output_path=out, num_inference_steps=1, guidance_scale=1.0, **TINY)
    settings = json.loads((out / "settings.json").read_text())
    assert len(settings["videos"]) == len(prompts) and len(settings["contact_sheet"]) == sampling.CONTACT_SHEET_MAX
    sheet = out / "contact_sheet.png"
    few = tmp_path / "few"
    sampling.sample("toy", prompt=prompts[:2], output_path=few, num_inference_steps=1, guidance_scale=1.0, **TINY)
    rows = lambda p: Image.open(p).height / Image.open(few / "contact_sheet.png").height * 2
    assert abs(rows(sheet) - sampling.CONTACT_SHEET_MAX) < 1.5, rows(sheet)  # 16 rows, not 20
    stamp = sheet.stat().st_mtime_ns
    sampling.sample("toy", prompt=prompts, output_path=out, num_inference_steps=1, guidance_scale=1.0, **TINY)
    assert sheet.stat().st_mtime_ns == stamp, "nothing changed: the sheet must not be redrawn"


def test_a_changed_model_folder_is_named(tmp_path):
    "Fine-tuning writes new weights into the same folder: videos of the old weights are not kept under the new ones."
    import os, shutil
    model = tmp_path / "model"
    shutil.copytree(toy.model_path(), model)
    kw = dict(prompt=PROMPTS[0], output_path=tmp_path / "out", num_inference_steps=1, guidance_scale=1.0, **TINY)
    sampling.sample(str(model), **kw)
    weights = next((model / "transformer").glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # rewritten a second later
    with pytest.raises(ValueError, match="the model folder's files changed"):
        sampling.sample(str(model), **kw)


def test_interrupted_overwrite_leaves_no_old_video_under_a_new_record_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "out"
    kw = dict(prompt=PROMPTS, output_path=out, guidance_scale=1.0, **TINY)
    sampling.sample("toy", num_inference_steps=1, **kw)
    names = [f"000_{sampling.slug(PROMPTS[0])}", f"001_{sampling.slug(PROMPTS[1])}"]
    real_write = sampling.media.write_mp4
    def stop_at_the_second(path, *a, **k):  # Ctrl-C while the second video is being written
        if path.name.startswith("001_"): raise KeyboardInterrupt
        return real_write(path, *a, **k)
    monkeypatch.setattr(sampling.media, "write_mp4", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        sampling.sample("toy", num_inference_steps=2, overwrite=True, **kw)
    monkeypatch.setattr(sampling.media, "write_mp4", real_write)
    record = lambda n: json.loads((out / f"{n}.json").read_text())["num_inference_steps"]
    assert record(names[0]) == 2 and (out / f"{names[0]}.mp4").exists()
    assert record(names[1]) == 2 and not (out / f"{names[1]}.mp4").exists(), "old pixels must not stand under the new record"
    done = (out / f"{names[0]}.mp4").stat().st_mtime_ns
    sheet = (out / "contact_sheet.png").stat().st_mtime_ns
    sampling.sample("toy", num_inference_steps=2, overwrite=True, **kw)  # the same command again: resumes
    assert (out / f"{names[0]}.mp4").stat().st_mtime_ns == done, "a video already remade must not be made again"
    assert (out / f"{names[1]}.mp4").exists() and (out / "contact_sheet.png").stat().st_mtime_ns > sheet


def test_pipeline_cache_reloads_new_weights(tmp_path):
    import os, shutil
    model = tmp_path / "model"
    shutil.copytree(toy.model_path(), model)
    first = sampling.load_pipeline(model)
    assert sampling.load_pipeline(model) is first
    weights = next((model / "transformer").glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # new weights written
    assert sampling.load_pipeline(model) is not first


def test_a_student_folder_samples_at_its_own_setting(tmp_path, cli):
    "No setting flags: toy-fast samples 8 steps of its PCM grid at guidance 1 (its distill_config.json); a flag wins."
    tiny = ["--num_frames", "7", "--height", "32", "--width", "48"]
    code, err = cli("sample", "--model_path", "toy-fast", "--prompt", PROMPTS[0], *tiny, "--output_path", tmp_path / "own")
    assert code == 0, err
    record = json.loads((tmp_path / "own" / "000_a_red_circle_moving_left.json").read_text())
    own = sampling.folder_settings("toy-fast")
    assert own["scheduler_type"] == "pcm_linear_quadratic" and own["num_inference_steps"] == 8 and own["guidance_scale"] == 1.0
    assert {k: record[k] for k in own} == own
    code, err = cli("sample", "--model_path", "toy-fast", "--prompt", PROMPTS[0], *tiny, "--num_inference_steps", "4",
                    "--output_path", tmp_path / "four")
    assert code == 0, err
    record = json.loads((tmp_path / "four" / "000_a_red_circle_moving_left.json").read_text())
    assert (record["num_inference_steps"], record["scheduler_type"], record["guidance_scale"]) == (4, "pcm_linear_quadratic", 1.0)
    # the folder's setting is exactly the explicit one: the same latents
    pipe = sampling.load_pipeline("toy-fast")
    implicit = sampling.generate("toy-fast", PROMPTS[0], seed=3, pipeline=pipe, progress=False, output_type="latent", **TINY)
    explicit = sampling.generate("toy-fast", PROMPTS[0], seed=3, pipeline=pipe, progress=False, output_type="latent",
                                 **{k: v for k, v in own.items()}, **TINY)
    assert torch.equal(implicit, explicit)
    teacher_way = sampling.generate("toy-fast", PROMPTS[0], seed=3, pipeline=pipe, progress=False, output_type="latent",
                                    num_inference_steps=8, scheduler_type="euler", guidance_scale=4.5, **TINY)
    assert not torch.equal(implicit, teacher_way)
