"""Forward+backward time of fastvideo's MochiDiT against diffusers' MochiTransformer3DModel, same weights, CPU fp32.

Run: .venv/bin/python bench/dit_bench.py [--repeats 10] [--threads 2] [--profile 15] [--compile]
The defaults are the issue's mid-size config; `--layers`, `--latent`, `--text_tokens` and `--text_lengths` change it
(e.g. `--text_tokens 256`: captions padded the way MochiPipeline pads them).
Prints the configuration, wall-clock medians (the two models interleaved so background load hits both alike),
process CPU-time medians (less sensitive to other processes on the machine), their ratios, FLOPs per forward and the
activation memory each model keeps for its backward.
`--compile` times both models under `torch.compile` (inductor; compiling takes tens of seconds on a small CPU).
`--profile N` adds, per model, the N aten ops taking the most self CPU time over one forward+backward
(torch.profiler, after the timed steps), to see where the time goes.
"""
import argparse, statistics, time
from dataclasses import asdict
import torch
from torch.utils.flop_counter import FlopCounterMode
from diffusers import MochiTransformer3DModel
from fastvideo.config import DiTConfig
from fastvideo.dit import MochiDiT, randomize_parameters

parser = argparse.ArgumentParser()
parser.add_argument("--repeats", type=int, default=10)  # timed steps per model
parser.add_argument("--warmup", type=int, default=2)    # untimed steps per model first
parser.add_argument("--threads", type=int, default=2)   # torch intra-op threads
parser.add_argument("--profile", type=int, default=0)   # print the top N ops of each model (0: none)
parser.add_argument("--layers", type=int, default=4)    # transformer blocks
parser.add_argument("--latent", default="3x16x28")      # latent frames x height x width
parser.add_argument("--text_tokens", type=int, default=64)          # caption length the batch is padded to (MochiPipeline: 256)
parser.add_argument("--text_lengths", default="40,17")  # real caption tokens per sample; their count is the batch size
parser.add_argument("--compile", action="store_true")   # time both models under torch.compile
args = parser.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

# mid-size: 4 blocks of 8 heads x 32, text stream 128 wide, T5 stand-in 256 wide
cfg = DiTConfig(num_attention_heads=8, attention_head_dim=32, num_layers=args.layers, pooled_projection_dim=128,
                text_embed_dim=256, time_embed_dim=256, max_sequence_length=args.text_tokens)
try: frames, height, width = (int(n) for n in args.latent.split("x"))
except ValueError: parser.error(f"--latent {args.latent!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 3x16x28")
try: text_tokens, text_lengths = args.text_tokens, [int(n) for n in args.text_lengths.split(",")]
except ValueError: parser.error(f"--text_lengths {args.text_lengths!r}: expected comma-separated counts, e.g. 40,17")
batch = len(text_lengths)
if max(text_lengths) > text_tokens: parser.error(f"--text_lengths {args.text_lengths}: longer than --text_tokens {text_tokens}")

ref = randomize_parameters(MochiTransformer3DModel(**asdict(cfg)))
ours = MochiDiT(**asdict(cfg))
ours.load_state_dict(ref.state_dict())
eager = {"ours": ours, "diffusers": ref}  # FLOPs, activations and the output check use the eager modules
if args.compile: ours, ref = torch.compile(ours), torch.compile(ref)
latents = torch.randn(batch, cfg.in_channels, frames, height, width)
text = torch.randn(batch, text_tokens, cfg.text_embed_dim)
mask = torch.zeros(batch, text_tokens, dtype=torch.long)
for i, n in enumerate(text_lengths): mask[i, :n] = 1
timestep = torch.linspace(300.0, 700.0, batch)

def step(model):
    model.zero_grad(set_to_none=True)
    model(latents, text, timestep, mask).sample.square().mean().backward()

print(f"config: {asdict(cfg)}")
print(f"input: batch {batch}, latent {frames}x{height}x{width} ({frames * height * width // cfg.patch_size ** 2} visual tokens per sample), "
      f"{text_tokens} text tokens with lengths {text_lengths}; CPU fp32, torch {torch.__version__}, "
      f"{torch.get_num_threads()} threads{', torch.compile' if args.compile else ''}; forward+backward, {args.warmup} warmup + median of {args.repeats}")

with torch.no_grad():
    diff = (ours(latents, text, timestep, mask).sample - ref(latents, text, timestep, mask).sample).abs().max().item()
print(f"max |ours - diffusers| output: {diff:.2e}")

flops = {}
for name, model in eager.items():
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(latents, text, timestep, mask)
    flops[name] = counter.get_total_flops()

def saved_mib(model):
    "MiB of activations autograd keeps for backward in one forward (distinct storages, weights excluded)."
    weights, kept = {p.untyped_storage().data_ptr() for p in model.parameters()}, {}
    def pack(t):
        if t.untyped_storage().data_ptr() not in weights: kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(latents, text, timestep, mask)
    return sum(kept.values()) / 2**20
saved = {name: saved_mib(model) for name, model in eager.items()}

for model in (ours, ref):
    for _ in range(args.warmup): step(model)
wall, cpu = {"ours": [], "diffusers": []}, {"ours": [], "diffusers": []}
for _ in range(args.repeats):
    for name, model in (("ours", ours), ("diffusers", ref)):
        w0, c0 = time.perf_counter(), time.process_time()
        step(model)
        wall[name].append(time.perf_counter() - w0); cpu[name].append(time.process_time() - c0)

med = lambda xs: statistics.median(xs) * 1e3
for name in ("ours", "diffusers"):
    print(f"{name:9s}: wall median {med(wall[name]):7.1f} ms, min {min(wall[name]) * 1e3:7.1f} ms; "
          f"cpu median {med(cpu[name]):7.1f} ms; forward {flops[name] / 1e9:.3f} GFLOP (matmuls + attention); "
          f"activations kept for backward {saved[name]:.1f} MiB")
ratio = lambda f, d: f(d["diffusers"]) / f(d["ours"])
print(f"speed-up ours vs diffusers (target >= 1.20x): wall median {ratio(med, wall):.2f}x, wall min {ratio(min, wall):.2f}x, "
      f"cpu median {ratio(med, cpu):.2f}x")

if args.profile:
    from torch.profiler import profile, ProfilerActivity
    for name, model in (("ours", ours), ("diffusers", ref)):
        with profile(activities=[ProfilerActivity.CPU]) as prof: step(model)
        ops = sorted((e for e in prof.key_averages() if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
        print(f"{name} top ops by self CPU time (one step under the profiler, {total:.1f} ms in all): " + ", ".join(
            f"{e.key[6:]} {e.self_cpu_time_total / 1e3:.1f} ms ({e.count}x)" for e in ops[:args.profile]))
