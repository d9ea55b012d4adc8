"""The LoRA stage's numbers, printed as tables (a benchmark, not a test).

Run: .venv/bin/python bench/lora_bench.py [--steps 8] [--threads 2]

1. Memory of one training step at the same config, full fine-tune against LoRA (rank 16, the visual attention), on
   the toy DiT and on a mid-size one (12 blocks of width 512): trainable parameters, and the bytes of parameters,
   gradients, AdamW state and saved activations, each measured (the gradients and optimizer state after a real step,
   the activations with saved-tensor hooks), and their sum; LoRA with an fp32 and with a bf16 frozen base.
2. Speed: the median step time of LoRA and full fine-tuning on the same batch, interleaved in one process.
3. Mochi-10B at rank 128 (FastVideo's Mochi LoRA; alpha 256): the trainable parameter count from the meta model with
   the adapters, the activations a bf16 block with adapters keeps per visual token (one real block), and the
   projected per-GPU memory: on 1 GPU at 37 frames of 480 x 848 (Genmo's fine-tuner: "50 GB at 37 frames on one
   H100") and on 2 GPUs under FSDP2 at 163 frames with SP 2 (FastVideo: "2 GPUs x 40 GB").
"""
import statistics, time
from dataclasses import asdict, replace

import torch

from _memory import bench_args, block_bytes_per_token, saved_bytes  # noqa: E402 (puts the repository on sys.path)
from fastvideo.config import preset  # noqa: E402
from fastvideo.dit import MochiBlock, MochiDiT, init_weights  # noqa: E402
from fastvideo.lora import add_lora  # noqa: E402
from fastvideo.train import flow_matching_loss, make_lr_scheduler, make_optimizer, optimizer_step  # noqa: E402

args = bench_args(steps=8)
MiB, GiB = 2**20, 2**30


def batch_for(cfg, latent=(12, 4, 8, 14), n=2):
    g = torch.Generator().manual_seed(2)
    return (torch.randn(n, *latent, generator=g), torch.randn(n, 16, cfg.text_embed_dim, generator=g),
            torch.ones(n, 16, dtype=torch.long), torch.rand(n, generator=g), torch.randn(n, *latent, generator=g))


def build(cfg, mode):
    model = init_weights(MochiDiT(**asdict(cfg)), seed=0).train()
    if mode != "full":
        add_lora(model, rank=16, alpha=16)
        if mode == "lora, bf16 base":  # as `--master_weight_type bf16` stores it: the frozen base in bf16
            for q in model.parameters():
                if not q.requires_grad: q.data = q.data.to(torch.bfloat16)
    opt = make_optimizer(model, 1e-4)
    return model, (opt, make_lr_scheduler(opt))


def nbytes(tensors): return sum(t.numel() * t.element_size() for t in tensors)


def measure(cfg, mode, batch):
    "Measured bytes of one step: parameters, gradients (after backward), AdamW state (after the step), saved activations."
    model, opts = build(cfg, mode)
    losses = []
    activations = saved_bytes(lambda: losses.append(flow_matching_loss(model, *batch)), model.parameters())
    losses[0].backward()
    grads = nbytes(q.grad for q in model.parameters() if q.grad is not None)
    optimizer_step(model, *opts)  # zeroes (frees) the gradients after the step; AdamW's state now exists
    state = nbytes(v for s in opts[0].state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0)
    row = dict(trainable=sum(q.numel() for q in model.parameters() if q.requires_grad),
               params=nbytes(model.parameters()), grads=grads, optimizer=state, activations=activations)
    row["sum"] = row["params"] + row["grads"] + row["optimizer"] + row["activations"]
    return row, model, opts


toy = preset("toy").dit
mid = replace(toy, num_attention_heads=8, attention_head_dim=64, num_layers=12, pooled_projection_dim=256)
print(f"1. one training step's memory (MiB), batch 2 of latents 12x4x8x14 (toy clips), fp32 compute; LoRA rank 16 on "
      "to_q, to_k, to_v, to_out.0 of every block")
print("| DiT | mode | trainable | params | grads | AdamW | activations | sum | sum / full |\n|---|---|---|---|---|---|---|---|---|")
speed = {}
for name, cfg in (("toy", toy), ("mid (12 x 512)", mid)):
    batch = batch_for(cfg)
    full = None
    for mode in ("full", "lora, fp32 base", "lora, bf16 base"):
        row, model, opts = measure(cfg, mode, batch)
        full = full or row
        print(f"| {name} | {mode} | {row['trainable']:,} | {row['params'] / MiB:.1f} | {row['grads'] / MiB:.2f} | "
              f"{row['optimizer'] / MiB:.2f} | {row['activations'] / MiB:.1f} | {row['sum'] / MiB:.1f} | {row['sum'] / full['sum']:.2f} |")
        if mode != "lora, bf16 base": speed[(name, mode)] = (model, opts, batch)

print(f"\n2. step time (loss, backward, clip, AdamW), same batch, interleaved, median of {args.steps} after 2 warm-up steps")
print("| DiT | full ms/step | LoRA ms/step | LoRA / full |\n|---|---|---|---|")
for name in ("toy", "mid (12 x 512)"):
    runs = {m: speed[(name, m)] for m in ("full", "lora, fp32 base")}
    times = {m: [] for m in runs}
    for i in range(args.steps + 2):
        for m, (model, opts, batch) in runs.items():
            t = time.perf_counter()
            flow_matching_loss(model, *batch).backward(); optimizer_step(model, *opts)
            if i >= 2: times[m].append(time.perf_counter() - t)
    f, l = (statistics.median(times[m]) * 1e3 for m in runs)
    print(f"| {name} | {f:.1f} | {l:.1f} | {l / f:.2f} |")

# 3. Mochi-10B, rank 128
big = add_lora(MochiDiT.from_config("mochi-10b", device="meta"), rank=128, alpha=256)
n_all = sum(q.numel() for q in big.parameters())
n_lora = sum(q.numel() for q in big.parameters() if q.requires_grad)
n_base = n_all - n_lora
c = preset("mochi-10b").dit
from peft import LoraConfig, inject_adapter_in_model  # noqa: E402
block = MochiBlock(c).to(torch.bfloat16)
inject_adapter_in_model(LoraConfig(r=128, lora_alpha=256, target_modules=["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"]), block)
for n_, q in block.named_parameters(): q.requires_grad_(".lora_" in n_)
per_token = block_bytes_per_token(block, c)
del block
print(f"\n3. Mochi-10B with LoRA rank 128 (alpha 256) on the visual attention: {n_lora / 1e6:.1f}M trainable parameters "
      f"of {n_all / 1e9:.2f}B ({100 * n_lora / n_all:.2f}%); a bf16 block with adapters keeps {per_token / 1024:.0f} KiB "
      "per visual token (one real block, 256 -> 512 tokens)")


def projection(frames, gpus, sp):
    latent_t = (frames - 1) // 6 + 1
    local = latent_t * 30 * 53 / sp  # 480 x 848: 60 x 106 latents, 2x2 patches
    base = 2 * n_base / gpus / GiB          # bf16 frozen weights, sharded by FSDP2
    lora_states = 16 * n_lora / gpus / GiB  # fp32 weights, gradients and AdamW's two moments
    gathered = 2 * sum(q.numel() for q in big.transformer_blocks[0].parameters()) / GiB if gpus > 1 else 0.0
    acts = (c.num_layers * local * c.inner_dim * 2 + local * per_token) / GiB  # checkpoint ratio 1: block inputs + one block
    return local, base, lora_states, gathered, acts


print("| setting | visual tokens per GPU | frozen base (bf16) | LoRA weights + grads + AdamW | one block gathered | "
      "activations (checkpoint ratio 1) | projected per GPU | published |\n|---|---|---|---|---|---|---|---|")
for label, frames, gpus, sp, published in (("1 GPU, 37 x 480 x 848", 37, 1, 1, "Genmo: 50 GB at 37 frames on one H100"),
                                           ("2 GPUs FSDP2, SP 2, 163 x 480 x 848", 163, 2, 2, "FastVideo: 2 GPUs x 40 GB")):
    local, base, states, gathered, acts = projection(frames, gpus, sp)
    total = base + states + gathered + acts
    print(f"| {label} | {local:,.0f} | {base:.1f} | {states:.2f} | {gathered:.2f} | {acts:.1f} | {total:.1f} GiB | {published} |")
print("(T5 and the VAE are not loaded: training reads precomputed latents and caption embeddings)")
