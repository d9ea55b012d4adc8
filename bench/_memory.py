"""What the benchmarks share: their command line, and saved-tensor counting (the activations a step keeps for backward)."""
import argparse, sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))


def bench_args(steps: int, min_steps: int = 1) -> argparse.Namespace:
    "`--steps` (timed steps, `steps` by default, at least `min_steps`) and `--threads` (2), with torch's thread count set."
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.steps < min_steps: p.error(f"--steps {args.steps}: expected at least {min_steps}")
    torch.set_num_threads(args.threads)
    return args


def saved_bytes(fn, params) -> int:
    "Bytes of the storages autograd saves while `fn()` runs, each counted once, leaving out those of `params`."
    weights, kept = {q.untyped_storage().data_ptr() for q in params}, {}
    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights: kept[ptr] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(kept.values())


def block_bytes_per_token(block, c) -> float:
    """Activations one bf16 Mochi block keeps per visual token: the saved bytes at 512 and at 256 visual tokens (with
    256 text tokens), their difference over 256."""
    def at(tokens):
        x = torch.randn(1, tokens, c.inner_dim, dtype=torch.bfloat16, requires_grad=True)
        t = torch.randn(1, 256, c.pooled_projection_dim, dtype=torch.bfloat16, requires_grad=True)
        cond = torch.randn(1, c.inner_dim, dtype=torch.bfloat16)
        angles = torch.randn(tokens, c.num_attention_heads, c.attention_head_dim // 2)
        return saved_bytes(lambda: block(x, t, cond, (angles, torch.polar(torch.ones_like(angles), angles)), None),
                           block.parameters())
    return (at(512) - at(256)) / 256
