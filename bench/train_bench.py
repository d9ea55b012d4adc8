"""The fine-tuning stage's numbers, printed as tables (a benchmark, not a test).

Run: .venv/bin/python bench/train_bench.py [--steps 12] [--threads 2]

1. `fastvideo train` on the toy model at the toy clip size (19 frames of 64 x 112: latents 4 x 8 x 14), batch 2:
   median s/step and visual tokens/s on 1 process, 2 data-parallel processes (FSDP2) and SP 2.
2. The same training step (loss, backward, clipping, AdamW) on MochiDiT and on diffusers' MochiTransformer3DModel with
   the same weights, batch and optimizer, interleaved in one process: the ratio.
3. Activation memory kept for backward (saved-tensor bytes) of that step at checkpoint ratio 0 / 0.5 / 1, fp32 and bf16.
4. Mochi-10B under FSDP2 (from the meta model, no memory used): per-rank bytes of fp32 master weights, gradients and
   AdamW state at 1 / 2 / 4 / 8 ranks, the activations a bf16 block keeps per visual token (measured on the meta
   device), and the projected per-GPU peak for a 163 x 480 x 848 clip (44,520 visual tokens) with SP 4 on 8 GPUs.
"""
import json, os, statistics, subprocess, sys, tempfile, time
from dataclasses import asdict
from pathlib import Path

import torch

from _memory import bench_args, block_bytes_per_token, saved_bytes  # noqa: E402 (puts the repository on sys.path)
from fastvideo.config import DiTConfig, preset  # noqa: E402
from fastvideo.data import random_latent_dataset  # noqa: E402
from fastvideo.dit import MochiDiT, randomize_parameters  # noqa: E402
from fastvideo.launch import torchrun  # noqa: E402
from fastvideo.train import flow_matching_loss, make_lr_scheduler, make_optimizer, optimizer_step  # noqa: E402

args = bench_args(steps=12, min_steps=3)  # the first two steps warm up
LATENT = (12, 4, 8, 14)  # the toy clip's latents


def dataset(root: Path, n: int = 8) -> Path:
    return random_latent_dataset(root, [LATENT] * n, text_tokens=16, seed=0)


def cli_run(data, out, nproc, *extra):
    cmd = ["-m", "fastvideo.cli", "train", "--data_json_path", str(data), "--output_dir", str(out), "--max_train_steps",
           str(args.steps), "--learning_rate", "1e-4", "--cfg", "0.1", *extra]
    if nproc == 1:
        done = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        log = done.stderr
    else:
        done = torchrun(cmd, nproc_per_node=nproc, capture=True, timeout=900); log = done.stdout
    if done.returncode: raise SystemExit(f"{out.name} failed:\n{log[-3000:]}")
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][2:]  # the first two warm up
    return statistics.median(r["s_per_step"] for r in rows), statistics.median(r["visual_tokens_per_s"] for r in rows)


work = Path(tempfile.mkdtemp())
data = dataset(work / "data")
print(f"1. fastvideo train, toy model, latents {LATENT[1]}x{LATENT[2]}x{LATENT[3]}, global batch 2, {args.steps} steps "
      f"(median of all but the first two), CPU fp32, {args.threads} cores in all")
print("| run | s/step | visual tokens/s |\n|---|---|---|")
for name, nproc, extra in (("1 process", 1, ("--train_batch_size", "2")),
                           ("2 processes, FSDP2 (1 sample each)", 2, ("--train_batch_size", "1")),
                           ("2 processes, SP 2 (both on each sample)", 2, ("--train_batch_size", "2", "--sp_size", "2"))):
    s, tok = cli_run(data, work / (name.split(",")[0].replace(" ", "_") + str(len(extra))), nproc, *extra)
    print(f"| {name} | {s:.3f} | {tok:,.0f} |")

# 2. the same step on both models
from diffusers import MochiTransformer3DModel  # noqa: E402
cfg = preset("toy").dit
ref = randomize_parameters(MochiTransformer3DModel(**asdict(cfg)), seed=1).train()
ours = MochiDiT(**asdict(cfg)).train(); ours.load_state_dict(ref.state_dict())
g = torch.Generator().manual_seed(2)
batch = (torch.randn(2, *LATENT, generator=g), torch.randn(2, 16, 32, generator=g), torch.ones(2, 16, dtype=torch.long),
         torch.rand(2, generator=g), torch.randn(2, *LATENT, generator=g))
batch[2][1, 9:] = 0
opts = {n: (lambda o: (o, make_lr_scheduler(o)))(make_optimizer(m, 1e-4)) for n, m in (("ours", ours), ("diffusers", ref))}
def step(name, model):
    loss = flow_matching_loss(model, *batch); loss.backward(); optimizer_step(model, *opts[name])
times = {"ours": [], "diffusers": []}
for i in range(args.steps + 2):
    for name, model in (("ours", ours), ("diffusers", ref)):
        t = time.perf_counter(); step(name, model)
        if i >= 2: times[name].append(time.perf_counter() - t)
med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
print(f"\n2. one training step (loss, backward, clip, AdamW), toy model, batch 2, in one process, interleaved")
print(f"| model | ms/step |\n|---|---|\n| MochiDiT | {med['ours']:.1f} |\n| diffusers MochiTransformer3DModel | {med['diffusers']:.1f} |")
print(f"ratio: {med['diffusers'] / med['ours']:.2f}x (target >= 1.2x)")


# 3. activation memory
def activation_mib(model, dtype, ratio):
    model.checkpoint_ratio = ratio
    kept = saved_bytes(lambda: flow_matching_loss(model, *(b.to(dtype) if b.is_floating_point() and b.ndim > 1 else b
                                                           for b in batch)), model.parameters())
    model.checkpoint_ratio = 0.0
    return kept / 2**20
print("\n3. activations kept for backward (MiB), toy model, batch 2")
print("| checkpoint ratio | fp32 | bf16 |\n|---|---|---|")
bf16 = MochiDiT.from_config(cfg, dtype=torch.bfloat16).train(); bf16.load_state_dict(ref.state_dict())
for r in (0.0, 0.5, 1.0):
    print(f"| {r} | {activation_mib(ours, torch.float32, r):.2f} | {activation_mib(bf16, torch.bfloat16, r):.2f} |")

# 4. Mochi-10B under FSDP2, from the meta model
big = MochiDiT.from_config("mochi-10b", device="meta")
n = sum(p.numel() for p in big.parameters())
block = big.transformer_blocks[0]
block_params = sum(p.numel() for p in block.parameters())
print(f"\n4. Mochi-10B ({n / 1e9:.2f}B parameters) under FSDP2: per-rank GiB, fp32 master weights + fp32 gradients + AdamW (2 fp32 moments)")
print("| ranks | weights | gradients | AdamW | sum |\n|---|---|---|---|---|")
gib = 2**30
for ranks in (1, 2, 4, 8):
    w = 4 * n / ranks / gib
    print(f"| {ranks} | {w:.1f} | {w:.1f} | {2 * w:.1f} | {4 * w:.1f} |")
# activations of one bf16 block per visual token: one real Mochi-10B block (0.4 GB of bf16 weights) at 256 and 512
# visual tokens (+ 256 text), saved-tensor storages counted once each; the difference is the per-token cost
from fastvideo.dit import MochiBlock  # noqa: E402
c = preset("mochi-10b").dit
real_block = MochiBlock(c).to(torch.bfloat16)
per_token = block_bytes_per_token(real_block, c)
del real_block
visual, sp, gpus, layers = 28 * 30 * 53, 4, 8, c.num_layers
local = visual / sp
unsharded_block = 2 * block_params / gib  # one block all-gathered in bf16 at a time
states = 16 * n / gpus / gib
full_ckpt_acts = (layers * local * c.inner_dim * 2 + local * per_token) / gib  # block inputs kept + one block recomputed
no_ckpt_acts = layers * local * per_token / gib
print(f"\nactivations a bf16 Mochi-10B block keeps: {per_token / 1024:.0f} KiB per visual token (one real block, 256 -> 512 tokens)")
print(f"projected per-GPU peak, 163x480x848 ({visual:,} visual tokens), SP {sp}, {gpus} GPUs (FSDP2 over all 8):")
print(f"| part | GiB |\n|---|---|\n| weights + gradients + AdamW (fp32, 1/{gpus}) | {states:.1f} |"
      f"\n| one block all-gathered (bf16) | {unsharded_block:.1f} |"
      f"\n| activations, checkpoint ratio 1 ({local:,.0f} tokens per rank) | {full_ckpt_acts:.1f} |"
      f"\n| activations, checkpoint ratio 0 | {no_ckpt_acts:.1f} |"
      f"\n| peak at ratio 1 | {states + unsharded_block + full_ckpt_acts:.1f} |")
print("FastVideo's published figure for a full fine-tune: 72 GB per GPU")
