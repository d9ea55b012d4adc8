"""Run under torchrun by tests/test_train.py: FSDP2 (`fastvideo.train.shard_model`) on N processes against one
process on the same global batch. Prints `ok fsdp rank=R {json}`; a failed check raises (non-zero exit)."""
import json, sys
from dataclasses import asdict
import torch, torch.distributed as dist
from fastvideo.config import DiTConfig
from fastvideo.dit import MochiDiT, randomize_parameters
from fastvideo.train import flow_matching_loss, make_optimizer, shard_model

CFG = DiTConfig(num_attention_heads=2, attention_head_dim=16, num_layers=2, pooled_projection_dim=24, text_embed_dim=32,
                time_embed_dim=16, max_sequence_length=8)


def rel(a, b): return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def case_fsdp():
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(1)
    B = 4
    batch = [torch.randn(B, 12, 2, 4, 4, generator=g), torch.randn(B, 8, 32, generator=g),
             torch.ones(B, 8, dtype=torch.long), torch.rand(B, generator=g), torch.randn(B, 12, 2, 4, 4, generator=g)]
    batch[2][1, 5:] = 0  # one caption with padding
    ref = randomize_parameters(MochiDiT(**asdict(CFG)), seed=1).train()
    model = shard_model(randomize_parameters(MochiDiT(**asdict(CFG)), seed=1).train())
    ref_opt, opt = make_optimizer(ref, 1e-3), make_optimizer(model, 1e-3)
    mine = slice(rank * B // world, (rank + 1) * B // world)  # each rank: its share of the global batch
    flow_matching_loss(model, *(t[mine] for t in batch)).backward()
    flow_matching_loss(ref, *batch).backward()
    ref_grads = {n: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}
    grad_rel = max(rel(p.grad.full_tensor(), ref_grads[n]) for n, p in model.named_parameters() if p.grad is not None)
    assert {n for n, p in model.named_parameters() if p.grad is not None} == set(ref_grads)
    opt.step(); ref_opt.step()
    # AdamW's first step moves every weight by ~lr * sign(grad): where the gradient is 0 in exact arithmetic (the
    # pooler's key bias: softmax ignores it) only rounding noise is left, and its sign differs; those are excluded
    weight_rel, excluded = 0.0, 0
    for n, p in model.named_parameters():
        q = dict(ref.named_parameters())[n]
        full = p.full_tensor().detach()
        if n in ref_grads:
            signal = ref_grads[n].abs() > 1e-6 * ref_grads[n].abs().max()
            excluded += int((~signal).sum())
            weight_rel = max(weight_rel, ((full - q.detach()).abs() * signal).max().item() / q.abs().max().item())
        else: assert torch.equal(full, q.detach()), n  # no gradient: not moved
    local = model.transformer_blocks[0].attn1.to_q.weight.to_local().shape[0]
    report = dict(grad_rel=grad_rel, weight_rel=weight_rel, excluded=excluded, local_rows=local,
                  full_rows=CFG.num_attention_heads * CFG.attention_head_dim)
    sys.stdout.write(f"ok fsdp rank={rank} {json.dumps(report)}\n"); sys.stdout.flush()  # one write: lines stay whole


if __name__ == "__main__":
    dist.init_process_group("gloo")
    try:
        for case in sys.argv[1:]: globals()[f"case_{case}"]()
    finally:
        dist.barrier(); dist.destroy_process_group()
