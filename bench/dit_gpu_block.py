"""One Mochi-10B-shaped joint block in bf16: forward and forward+backward time, TFLOP/s and MFU, ours vs diffusers'.

Run on a GPU: .venv/bin/python bench/dit_gpu_block.py [--visual_tokens 44520] [--text_tokens 256] [--repeats 10]
  44,520 visual tokens = 28 latent frames x 30 x 53 patches (a 163-frame 848x480 video); 256 caption tokens.
  MFU = model FLOPs (FlopCounterMode: matmuls + attention) / time / the GPU's dense bf16 peak (`--peak_tflops`,
  default from the device name: H100/H200 989).
Smoke test on a CPU: .venv/bin/python bench/dit_gpu_block.py --device cpu --tiny --repeats 1
Both blocks get the same random weights; the script checks their outputs agree before timing.
"""
import argparse, statistics, time
import torch, torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from diffusers.models.transformers.transformer_mochi import MochiTransformerBlock
from fastvideo.config import DiTConfig, preset
from fastvideo.dit import MochiBlock, randomize_parameters, rope_angles, rope_positions

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cuda")
parser.add_argument("--visual_tokens", type=int, default=44520)  # 28 x 30 x 53 patches
parser.add_argument("--text_tokens", type=int, default=256)
parser.add_argument("--repeats", type=int, default=10)
parser.add_argument("--warmup", type=int, default=3)
parser.add_argument("--peak_tflops", type=float, default=None)  # dense bf16 peak of the device (default: from its name)
parser.add_argument("--tiny", action="store_true")  # toy widths and 48 + 8 tokens, for a CPU smoke test
args = parser.parse_args()
device = torch.device(args.device)
if device.type == "cuda" and not torch.cuda.is_available(): parser.error("--device cuda: no CUDA device here (try --device cpu --tiny)")
dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

if args.tiny:
    cfg, grid, text_tokens = DiTConfig(num_attention_heads=2, attention_head_dim=16, num_layers=1, pooled_projection_dim=24), (3, 4, 4), 8
else:
    cfg, grid, text_tokens = preset("mochi-10b").dit, None, args.text_tokens
if grid is None:  # frames x rows x columns of patches with the asked number of tokens
    frames = 28 if args.visual_tokens % 28 == 0 else 1
    rest = args.visual_tokens // frames
    rows = max(r for r in range(1, int(rest ** 0.5) + 1) if rest % r == 0)
    grid = (frames, rows, rest // rows)
N = grid[0] * grid[1] * grid[2]
torch.manual_seed(0)

ours = randomize_parameters(MochiBlock(cfg)).to(device, dtype)
ref = MochiTransformerBlock(cfg.inner_dim, cfg.num_attention_heads, cfg.attention_head_dim, cfg.pooled_projection_dim)
ref.load_state_dict(ours.state_dict())
ref.to(device, dtype)

x = torch.randn(1, N, cfg.inner_dim, device=device, dtype=dtype)
text = torch.randn(1, text_tokens, cfg.pooled_projection_dim, device=device, dtype=dtype)
conditioning = torch.randn(1, cfg.inner_dim, device=device, dtype=dtype)
angles = rope_angles(torch.randn(3, cfg.num_attention_heads, cfg.attention_head_dim // 2, device=device) * 0.1,
                     rope_positions(*grid, device=device))
rope = (angles, torch.polar(torch.ones_like(angles), angles))
full_mask = torch.ones(1, text_tokens, dtype=torch.bool, device=device)
for t in (x, text, conditioning): t.requires_grad_()

def run_ours(): return ours(x, text, F.silu(conditioning), rope, None)
def run_ref(): return ref(x, text, conditioning, full_mask, (angles.cos(), angles.sin()))

with torch.no_grad():
    (a, at), (b, bt) = run_ours(), run_ref()
    err = max(((a - b).abs().max() / b.abs().max()).item(), ((at - bt).abs().max() / bt.abs().max()).item())
print(f"block: dim {cfg.inner_dim}, {cfg.num_attention_heads} heads x {cfg.attention_head_dim}, text width "
      f"{cfg.pooled_projection_dim}; tokens {N} visual ({'x'.join(map(str, grid))}) + {text_tokens} text; {dtype}, {device}"
      f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}")
print(f"max |ours - diffusers| / max |diffusers| (outputs): {err:.2e}")

def sync():
    if device.type == "cuda": torch.cuda.synchronize(device)

def timed(fn, backward):
    "Median seconds of fn (+ backward of the sum of its outputs)."
    def once():
        out = fn()
        if backward: (out[0].float().sum() + out[1].float().sum()).backward()
    for _ in range(args.warmup): once()
    times = []
    for _ in range(args.repeats):
        sync(); t0 = time.perf_counter(); once(); sync(); times.append(time.perf_counter() - t0)
    return statistics.median(times)

def flops(fn, backward):
    with FlopCounterMode(display=False) as counter:
        out = fn()
        if backward: (out[0].float().sum() + out[1].float().sum()).backward()
    return counter.get_total_flops()

peak = args.peak_tflops
if peak is None and device.type == "cuda":
    name = torch.cuda.get_device_name(device)
    peak = 989.0 if ("H100" in name or "H200" in name) else None
for backward in (False, True):
    what = "forward+backward" if backward else "forward"
    with torch.set_grad_enabled(backward):
        f = flops(run_ours, backward)
        t_ours, t_ref = timed(run_ours, backward), timed(run_ref, backward)
    mfu = f"; MFU {f / t_ours / 1e12 / peak:.1%} of {peak:.0f} TFLOP/s" if peak else ""
    print(f"{what}: ours {t_ours * 1e3:.2f} ms ({f / t_ours / 1e12:.1f} TFLOP/s{mfu}), diffusers {t_ref * 1e3:.2f} ms, "
          f"speed-up {t_ref / t_ours:.2f}x; {f / 1e12:.3f} TFLOP")
if device.type == "cuda": print(f"peak memory allocated: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
