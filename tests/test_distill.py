"""PCM distillation as a mode of the fine-tuning loop: SIGKILL + resume bit-exact, FSDP2 and SP 2 against one
process, and bad input (the pure parts, grid, phases, loss, are tested in nbs/09_distill.ipynb)."""
import json, os, signal, subprocess, sys, time

import torch

from fastvideo.launch import torchrun
from test_train import compare_runs, final_weights, losses, tiny_dataset


def distill_cmd(data, out, *extra):
    "`fastvideo distill` on the toy teacher: EMA target, guided solver, 2 phases then 1 (the switch at step 4)."
    return [sys.executable, "-m", "fastvideo.cli", "distill", "--data_json_path", str(data), "--output_dir", str(out),
            "--max_train_steps", "8", "--checkpointing_steps", "4", "--train_batch_size", "2", "--learning_rate", "1e-3",
            "--use_ema", "--multi_phased_distill_schedule", "4-2,8-1", "--cfg", "0.2", "--seed", "0", *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_one(data, out, *extra):
    done = subprocess.run(distill_cmd(data, out, *extra), capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]


def test_distill_sigkill_then_resume_equals_uninterrupted(tmp_path, cli):
    data = tiny_dataset(tmp_path / "data")
    long = ("--max_train_steps", "24")  # the kill after checkpoint 4 lands well before the end
    run_one(data, tmp_path / "full", *long)
    final = tmp_path / "full" / "final"
    assert json.loads((final / "distill_config.json").read_text())["multi_phased_distill_schedule"] == "4-2,8-1"
    proc = subprocess.Popen(distill_cmd(data, tmp_path / "killed", *long), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (tmp_path / "killed" / "checkpoint-4" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (tmp_path / "killed" / "final").exists()
    run_one(data, tmp_path / "killed", *long, "--resume_from_checkpoint", "latest")
    assert losses(tmp_path / "killed") == losses(tmp_path / "full")  # bit for bit, across the phase switch
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a resume must continue the same distillation: another guidance is refused, naming the field
    code, err = cli(*distill_cmd(data, tmp_path / "killed", "--max_train_steps", "25", "--resume_from_checkpoint",
                                 "latest", "--distill_cfg", "1.0")[3:])
    assert code == 2 and "distill_cfg=3.0" in err, err[-1500:]
    # the distilled folder is a model folder `fastvideo sample` takes, at the student's setting
    code, err = cli("sample", "--model_path", final, "--prompt", "a red circle moving left", "--num_inference_steps", "8",
                    "--scheduler_type", "pcm_linear_quadratic", "--guidance_scale", "1", "--num_frames", "7",
                    "--height", "32", "--width", "48", "--output_path", tmp_path / "samples")
    assert code == 0, err
    record = json.loads((tmp_path / "samples" / "000_a_red_circle_moving_left.json").read_text())
    assert (record["num_inference_steps"], record["scheduler_type"], record["guidance_scale"]) == (8, "pcm_linear_quadratic", 1.0)


def test_distill_on_two_processes_and_sp2_equals_one(tmp_path):
    "FSDP2 over the student and the teacher on 2 processes (1 sample each), and SP 2, against 1 process (2 samples)."
    data = tiny_dataset(tmp_path / "data")
    short = ("--max_train_steps", "6", "--checkpointing_steps", "0")
    run_one(data, tmp_path / "one", *short)
    for name, extra in (("dp2", ("--train_batch_size", "1")), ("sp2", ("--sp_size", "2"))):
        done = torchrun(["-m", *distill_cmd(data, tmp_path / name, *short, *extra)[2:]], nproc_per_node=2, timeout=300,
                        capture=True)
        assert done.returncode == 0, done.stdout[-4000:]
        loss_rel, weight_rel = compare_runs(tmp_path / name, tmp_path / "one")
        # step 1 agrees to 1e-7; the loss is the distance of two nearly equal jumps, so the float-order noise of later
        # steps is relatively larger than fine-tuning's (1.5e-5 measured on dp2); another grid point or noise draw
        # would be off by tens of percent
        assert loss_rel <= 1e-4 and weight_rel <= 2e-3, (name, loss_rel, weight_rel)


def test_distill_bad_input_is_named(tmp_path, cli):
    from fastvideo import toy
    from fastvideo.dit import MochiDiT
    data = tiny_dataset(tmp_path / "data", n=2)
    run = lambda *extra: cli(*distill_cmd(data, tmp_path / "out", *extra)[3:])
    for extra, says in ((("--multi_phased_distill_schedule", "100-64"), "64 phases on --num_euler_timesteps 50"),
                        (("--multi_phased_distill_schedule", "4000:1"), "'4000:1' is not STEP-PHASES"),
                        (("--distill_cfg", "-1"), "--distill_cfg -1.0: expected a number >= 0"),
                        (("--num_euler_timesteps", "0"), "--num_euler_timesteps 0: expected an integer from 1 to 1000")):
        code, err = run(*extra)
        assert code == 2 and says in err, (extra, err)
    code, err = run("--teacher_path", str(tmp_path / "nope"))
    assert code == 2 and f"--teacher_path {tmp_path / 'nope'}: no such folder" in err, err
    other = MochiDiT.from_config({**MochiDiT.from_pretrained(toy.model_path(), subfolder="transformer").config, "num_layers": 2})
    other.save_pretrained(tmp_path / "teacher" / "transformer")
    code, err = run("--teacher_path", str(tmp_path / "teacher"))
    assert code == 2 and "the teacher's transformer config differs from the student's in num_layers (teacher 2, student 6)" in err, err
    assert not (tmp_path / "out").exists(), "nothing is written before the teacher is checked"


def test_lora_distillation_learns_adapters_against_its_own_base(tmp_path):
    """`--use_lora`: no teacher is loaded, the student's base (adapters off) is the teacher. At step 1 the adapters are
    zero (B = 0), so the LoRA student, its EMA target and its base are the full run's student, target and teacher:
    the first loss agrees with full distillation's; then only adapters change and they are what is exported."""
    from safetensors.torch import load_file
    from fastvideo.lora import LORA_WEIGHT_NAME
    data = tiny_dataset(tmp_path / "data")
    short = ("--max_train_steps", "3", "--checkpointing_steps", "0")
    run_one(data, tmp_path / "full", *short)
    run_one(data, tmp_path / "lora", *short, "--use_lora", "--lora_rank", "4", "--lora_alpha", "4")
    full, lora = losses(tmp_path / "full"), losses(tmp_path / "lora")
    assert abs(lora[1] - full[1]) <= 1e-5 * abs(full[1]), (lora, full)
    assert lora[3] != full[3], "later steps differ: the LoRA run updates adapters only"
    final = tmp_path / "lora" / "final"
    assert {LORA_WEIGHT_NAME, "distill_config.json"} <= {p.name for p in final.iterdir()}
    weights = load_file(final / LORA_WEIGHT_NAME)
    assert weights and all("lora_" in k for k in weights)
    assert max(v.abs().max().item() for k, v in weights.items() if "lora_B" in k) > 0, "the adapters never moved"
    assert json.loads((final / "distill_config.json").read_text())["use_ema"] is True
