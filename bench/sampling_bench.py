"""Sampling speed on the toy folder, ours vs diffusers' MochiPipeline in one run, plus 8-step PCM vs 64-step base.
Run: .venv/bin/python bench/sampling_bench.py [--threads 2] [--steps 8] [--repeats 3]
Seconds per denoising step = (time at N steps - time at 2 steps) / (N - 2) (diffusers cannot run 1 step), so text encoding and VAE decoding cancel."""
import argparse, os, platform, statistics, time
import numpy as np
import torch
from diffusers import MochiPipeline
from fastvideo import sampling, toy

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--steps", type=int, default=32)
p.add_argument("--repeats", type=int, default=3)
args = p.parse_args()
torch.set_num_threads(args.threads)

ours = sampling.load_pipeline("toy")
ref = MochiPipeline.from_pretrained(toy.model_path(), dtype=torch.float32)
ref.set_progress_bar_config(disable=True)
size = dict(num_frames=19, height=64, width=112)
prompt = "a red circle moving left"
shape = sampling.latent_shape(ours, **size)
latents = sampling.prepare_latents(1, shape, seed=0)

def run_ours(steps, kind="euler"):
    return sampling.generate("toy", prompt, num_inference_steps=steps, scheduler_type=kind, guidance_scale=4.5,
                             latents=latents.clone(), pipeline=ours, progress=False, **size)

def run_ref(steps):
    return ref(prompt, num_inference_steps=steps, guidance_scale=4.5, latents=latents.clone(),
               max_sequence_length=ours.max_sequence_length, output_type="np", **size).frames

def timed(fn, *a):
    t = time.perf_counter(); fn(*a); return time.perf_counter() - t

for fn in (run_ours, run_ref): fn(2)  # warm up
times = {name: {n: [] for n in (2, args.steps)} for name in ("ours", "diffusers")}
for _ in range(args.repeats):  # interleaved so load on the machine hits both alike
    for n in (2, args.steps):
        times["ours"][n].append(timed(run_ours, n))
        times["diffusers"][n].append(timed(run_ref, n))
med = {k: {n: statistics.median(v) for n, v in d.items()} for k, d in times.items()}
per_step = {k: (m[args.steps] - m[2]) / (args.steps - 2) for k, m in med.items()}
print(f"config: toy folder, 1 prompt, {size['num_frames']}x{size['height']}x{size['width']} px "
      f"(latent {'x'.join(map(str, shape))}), CFG 4.5 (batch 2 per DiT call), fp32, {args.threads} threads, "
      f"{platform.machine()}, median of {args.repeats}")
for k in ("ours", "diffusers"):
    print(f"{k:9s}: {per_step[k] * 1e3:7.2f} ms/step   ({args.steps} steps: {med[k][args.steps]:.3f} s end to end)")
print(f"speed-up per step (diffusers / ours): {per_step['diffusers'] / per_step['ours']:.2f}x")

t64 = statistics.median(timed(run_ours, 64) for _ in range(max(1, args.repeats - 1)))
t8 = statistics.median(timed(run_ours, 8, "pcm_linear_quadratic") for _ in range(args.repeats))
print(f"ours, 64-step base (euler): {t64:.3f} s   8-step FastMochi (pcm_linear_quadratic): {t8:.3f} s   "
      f"wall ratio {t64 / t8:.2f}x")
