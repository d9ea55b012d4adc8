"""Worker that tests/test_distributed.py runs under torchrun: `torchrun --nproc_per_node N tests/dist_worker.py CASE ...`.

Every rank builds the same random inputs, runs the sequence-parallel code and checks it against one process: Ulysses
attention against full attention, and the whole MochiDiT on frame shards against the DiT on the whole video. Each passed case prints one line `ok CASE rank=R {json}`; a failed check raises (non-zero exit).
"""
import json, os, sys
from datetime import timedelta

import torch
import torch.distributed as dist

from fastvideo.attention import (all_to_all_heads_to_seq, all_to_all_seq_to_heads, attention, count_all_to_all,
                                 ulysses_all_to_all_bytes, ulysses_attention)
from fastvideo.config import DiTConfig
from fastvideo.dit import MochiDiT, randomize_parameters
from fastvideo.distributed import (broadcast, destroy_distributed, dp_group, dp_rank, gather, init_distributed,
                                   sequence_parallel, shard, shard_indices, sp_group, sp_rank, sp_size)

FWD_ATOL, GRAD_RTOL = 1e-5, 1e-4


def make_inputs(seed, batch, heads, frames, tokens_per_frame, text_tokens, head_dim, text_lengths):
    "Visual q, k, v [B, H, frames, tokens_per_frame, D], text q, k, v [B, H, T, D], the text mask and loss weights."
    g = torch.Generator().manual_seed(seed)
    vis = [torch.randn(batch, heads, frames, tokens_per_frame, head_dim, generator=g) for _ in range(3)]
    txt = [torch.randn(batch, heads, text_tokens, head_dim, generator=g) for _ in range(3)]
    txt_mask = torch.arange(text_tokens)[None] < torch.tensor(text_lengths)[:, None]
    w_vis = torch.randn(batch, heads, frames, tokens_per_frame, head_dim, generator=g)
    w_txt = torch.randn(batch, heads, text_tokens, head_dim, generator=g)
    return vis, txt, txt_mask, w_vis, w_txt


def reference(vis, txt, txt_mask, w_vis, w_txt, text_queries=True):
    "Full joint attention on one process: outputs and input gradients of sum(out * w)."
    vis = [t.clone().requires_grad_() for t in vis]
    txt = [t.clone().requires_grad_() for t in txt]
    B, H, F, S, D = vis[0].shape
    mask = torch.cat([torch.ones(B, F * S, dtype=torch.bool), txt_mask], 1)
    q = vis[0].flatten(2, 3) if not text_queries else torch.cat([vis[0].flatten(2, 3), txt[0]], 2)
    out = attention(q, *(torch.cat([v.flatten(2, 3), t], 2) for v, t in zip(vis[1:], txt[1:])), mask)
    vis_out, txt_out = out[:, :, :F * S].unflatten(2, (F, S)), out[:, :, F * S:]
    ((vis_out * w_vis).sum() + (txt_out * w_txt[:, :, :txt_out.shape[2]]).sum()).backward()
    grad = lambda t: torch.zeros_like(t) if t.grad is None else t.grad
    return vis_out.detach(), txt_out.detach(), [grad(t) for t in vis], [grad(t) for t in txt]


def sequence_parallel_run(vis, txt, txt_mask, w_vis, w_txt, group=None, text_queries=True):
    "The same computation under SP: frames sharded, Ulysses attention, loss on the local shard."
    n, F = sp_size(group), vis[0].shape[2]
    local = [shard(t, 2, group).detach().requires_grad_() for t in vis]  # [B, H, F_local, S, D], padding frames zero
    txt = [t.clone().requires_grad_() for t in txt]
    B, H, F_local, S, D = local[0].shape
    valid = (shard_indices(F, group) < F).repeat_interleave(S).expand(B, -1)  # this rank's real tokens
    with count_all_to_all() as fwd:
        vis_out, txt_out = ulysses_attention(*(t.flatten(2, 3) for t in local), txt[0] if text_queries else None,
                                             *txt[1:], vis_valid=valid, txt_mask=txt_mask, group=group)
    if txt_out is None: txt_out = w_txt[:, :, :0]  # no text queries: no text output, nothing in the loss
    vis_out = vis_out.unflatten(2, (F_local, S))
    # the objective is the sum of the ranks' losses: the replicated text output counts once in total
    loss = (vis_out * shard(w_vis, 2, group)).sum() + (txt_out * w_txt[:, :, :txt_out.shape[2]]).sum() / n
    with count_all_to_all() as bwd:
        loss.backward()
    txt_grads = [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in txt]
    for g in txt_grads: dist.all_reduce(g, group=group or sp_group())  # replicated inputs: sum the ranks' shares
    return dict(vis_out=gather(vis_out.detach(), 2, length=F, group=group), txt_out=txt_out.detach(),
                vis_grads=[gather(t.grad, 2, length=F, group=group) for t in local], txt_grads=txt_grads,
                fwd=fwd, bwd=bwd, local_tokens=F_local * S)


def max_abs(a, b): return (a - b).abs().max().item()
def rel(a, b): return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def check_equal(seed, batch, heads, frames, tokens_per_frame, text_tokens, head_dim, text_lengths, group=None,
                text_queries=True):
    inputs = make_inputs(seed, batch, heads, frames, tokens_per_frame, text_tokens, head_dim, text_lengths)
    ref_vis, ref_txt, ref_vis_grads, ref_txt_grads = reference(*inputs, text_queries=text_queries)
    sp = sequence_parallel_run(*inputs, group=group, text_queries=text_queries)
    n = sp_size(group)
    txt_err = max_abs(sp["txt_out"], ref_txt) if text_queries else 0.0
    report = dict(sp_size=n, frames=frames, text_lengths=text_lengths, text_queries=text_queries,
                  vis_err=max_abs(sp["vis_out"], ref_vis), txt_err=txt_err,
                  vis_grad_rel=max(rel(a, b) for a, b in zip(sp["vis_grads"], ref_vis_grads)),
                  txt_grad_rel=max(rel(a, b) for a, b in zip(sp["txt_grads"], ref_txt_grads)),
                  bytes_fwd=sp["fwd"].bytes_sent, calls_fwd=sp["fwd"].calls,
                  bytes_bwd=sp["bwd"].bytes_sent, calls_bwd=sp["bwd"].calls,
                  formula_fwd=ulysses_all_to_all_bytes(batch, heads, sp["local_tokens"], head_dim, n),
                  formula_fwd_bwd=ulysses_all_to_all_bytes(batch, heads, sp["local_tokens"], head_dim, n, backward=True))
    assert report["vis_err"] <= FWD_ATOL and report["txt_err"] <= FWD_ATOL, report
    assert report["vis_grad_rel"] <= GRAD_RTOL and report["txt_grad_rel"] <= GRAD_RTOL, report
    assert report["bytes_fwd"] == report["formula_fwd"], report
    assert report["bytes_fwd"] + report["bytes_bwd"] == report["formula_fwd_bwd"], report
    assert (report["calls_fwd"], report["calls_bwd"]) == (4, 4), report
    return report


def expect_error(fn, contains):
    try: fn()
    except (ValueError, RuntimeError) as e:
        assert contains in str(e), f"expected {contains!r} in {e!r}"
        return str(e)
    raise AssertionError(f"expected an error containing {contains!r}")


def case_equal(world):
    "SP over the whole world: 5 frames (divides neither 2 nor 4), two prompts of different lengths."
    init_distributed(sp_size=world, timeout_s=60)
    return check_equal(0, batch=2, heads=4, frames=5, tokens_per_frame=3, text_tokens=6, head_dim=8, text_lengths=[6, 2])


def case_last_block(world):
    "No text queries (Mochi's last block): only visual outputs; text k, v still get their gradients."
    init_distributed(sp_size=world, timeout_s=60)
    return check_equal(3, batch=2, heads=4, frames=5, tokens_per_frame=3, text_tokens=6, head_dim=8, text_lengths=[3, 6],
                       text_queries=False)


def case_gather_grad(world):
    "gather's backward is a reduce-scatter: with every rank computing sum(w * gather(x)) / n, x gets w's slice."
    init_distributed(sp_size=world, timeout_s=60)
    g = torch.Generator().manual_seed(1)
    full, w = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    x = shard(full, 1).requires_grad_()
    y = gather(x, 1, length=7)
    assert torch.equal(y, full)
    ((y * w).sum() / sp_size()).backward()
    assert torch.allclose(x.grad, shard(w, 1)), (x.grad, shard(w, 1))
    # broadcast: every rank of the SP group ends up with its first rank's tensor
    mine = torch.full((2, 3), float(dist.get_rank()))
    assert torch.equal(broadcast(mine), torch.zeros(2, 3)), mine
    # the public all-to-alls: there and back is the identity, and so is its gradient
    x = torch.randn(2, 4, 3, 5, generator=g).requires_grad_()
    heads = all_to_all_seq_to_heads(x)
    assert heads.shape == (2, 4 // sp_size(), 3 * sp_size(), 5)
    back = all_to_all_heads_to_seq(heads)
    assert torch.equal(back, x)
    back.backward(2 * torch.ones_like(back))
    assert torch.equal(x.grad, torch.full_like(x, 2.0))
    return dict(shard=list(y.shape), heads=list(heads.shape))


def case_dp(world):
    "Two SP groups on different samples: batch, frame count, prompt lengths and text dropout all differ across them."
    init_distributed(sp_size=world // 2, timeout_s=60)
    d = dp_rank()
    lengths = [[6, 2], [0, 3, 9]][d]  # dp group 1: the first prompt dropped entirely (text dropout)
    return check_equal(10 + d, batch=len(lengths), heads=4, frames=[5, 3][d], tokens_per_frame=2,
                       text_tokens=[6, 9][d], head_dim=8, text_lengths=lengths) | dict(dp_rank=d)


def case_mismatch(world):
    "Ranks of one SP group disagree (prompt length, frame count): the same clear error on every rank, no deadlock."
    init_distributed(sp_size=world, timeout_s=60)
    r = sp_rank()
    vis, txt = torch.randn(3, 1, 4, 6, 8), torch.randn(3, 1, 4, 5 + r, 8)
    e1 = expect_error(lambda: ulysses_attention(*vis, *txt), "disagree on text_tokens")
    vis = torch.randn(3, 1, 4, 6 + r, 8)
    e2 = expect_error(lambda: ulysses_attention(*vis, *txt[:, :, :, :5]), "disagree on local_tokens")
    return dict(errors=[e1[:200], e2[:200]])


def case_errors(world):
    "heads % sp_size != 0 and an sp_size that does not divide the world: errors raised before any collective."
    init_distributed(sp_size=world, timeout_s=60)
    heads = world + 1
    vis, txt = torch.randn(3, 1, heads, 4, 8), torch.randn(3, 1, heads, 3, 8)
    e1 = expect_error(lambda: ulysses_attention(*vis, *txt), f"heads={heads} is not divisible by sp_size={world}")
    e2 = expect_error(lambda: init_distributed(sp_size=world + 1), f"sp_size={world + 1} must divide the world size")
    with sequence_parallel(None):  # an SP region switched off inside an SP world: plain attention, no collective
        assert sp_size() == 1
        out, _ = ulysses_attention(*torch.randn(3, 1, 3, 4, 8), *torch.randn(3, 1, 3, 2, 8))
    return dict(errors=[e1[:200], e2[:200]])


# ---- MochiDiT under SP: each rank passes its shard of the latent frames and gets its shard of the output ----
# 4 heads (divisible by 2 and 4), 3 blocks (the last one without text queries), every parameter random, H != W
DIT_CFG = DiTConfig(num_attention_heads=4, attention_head_dim=8, num_layers=3, pooled_projection_dim=24,
                    in_channels=12, text_embed_dim=16, time_embed_dim=16, max_sequence_length=8)


def dit_inputs(seed, batch, frames, text_tokens, text_lengths, height=4, width=6):
    "Latents [B, 12, frames, height, width], caption embeddings and mask (prefix masks), timesteps, loss weights."
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, DIT_CFG.in_channels, frames, height, width, generator=g)
    text = torch.randn(batch, text_tokens, DIT_CFG.text_embed_dim, generator=g)
    mask = (torch.arange(text_tokens)[None] < torch.tensor(text_lengths)[:, None]).long()
    timestep = torch.rand(batch, generator=g) * 1000
    return latents, text, timestep, mask, torch.randn(latents.shape, generator=g)


def dit_run(model, latents, text, timestep, mask, weights, sp: bool):
    "Output, and the gradients of sum(output * weights) for the parameters and the inputs; under SP the ranks' sum."
    model.zero_grad(set_to_none=True)
    frames = latents.shape[2]
    x = (shard(latents, 2) if sp else latents).detach().requires_grad_()
    text = text.clone().requires_grad_()
    out = model(x, text, timestep, mask, num_frames=frames if sp else None).sample
    # the objective is the sum of the ranks' losses on their own frames: shard's zero padding weighs padding frames 0
    (out * (shard(weights, 2) if sp else weights)).sum().backward()
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    grads["input:text"] = text.grad.clone()
    if sp:
        for g in grads.values(): dist.all_reduce(g, group=sp_group())  # replicated tensors: sum the ranks' shares
        out = gather(out.detach(), 2, length=frames)
        grads["input:latents"] = gather(x.grad, 2, length=frames)
    else: grads["input:latents"] = x.grad
    return out.detach(), grads


def dit_model(seed=0, checkpoint_ratio=0.0):
    return randomize_parameters(MochiDiT.from_config(DIT_CFG, checkpoint_ratio=checkpoint_ratio), seed=seed)


def dit_compare(model, inputs):
    "SP on the current group against one process (SP switched off) on the same model and inputs."
    with sequence_parallel(None), count_all_to_all() as one_process: ref_out, ref_grads = dit_run(model, *inputs, sp=False)
    with count_all_to_all() as traffic: out, grads = dit_run(model, *inputs, sp=True)
    # every block attends through Ulysses: 4 all-to-alls forward and 4 backward, plus 4 in a checkpointed block's
    # recomputation (which must attend through Ulysses too); SP switched off, none
    expected = 8 * len(model.transformer_blocks) + 4 * len(model.checkpointed_blocks())
    assert (one_process.calls, traffic.calls) == (0, expected), \
        f"all-to-alls: {one_process.calls} with SP off, {traffic.calls} under SP; expected 0 and {expected}"
    report = dict(sp_size=sp_size(), frames=inputs[0].shape[2], text_lengths=inputs[3].sum(1).tolist(),
                  checkpoint_ratio=model.checkpoint_ratio, out_err=max_abs(out, ref_out),
                  out_scale=ref_out.abs().max().item(), grad_rel=max(rel(grads[k], ref_grads[k]) for k in ref_grads),
                  worst_grad=max(ref_grads, key=lambda k: rel(grads[k], ref_grads[k])))
    return report, grads, ref_grads


def case_dit(world):
    "SP over the whole world: 5 latent frames (divides neither 2 nor 4), prompts of 5 and 0 real tokens."
    init_distributed(sp_size=world, timeout_s=60)
    inputs = dit_inputs(20, batch=2, frames=5, text_tokens=7, text_lengths=[5, 0])
    report, _, _ = dit_compare(dit_model(), inputs)
    # checkpointed blocks recompute in backward: the recomputation must attend through Ulysses too
    report_ckpt, _, _ = dit_compare(dit_model(checkpoint_ratio=0.5), inputs)
    report["ckpt_out_err"], report["ckpt_grad_rel"] = report_ckpt["out_err"], report_ckpt["grad_rel"]
    # whatever sits in the padding frames (a sampler's leftovers, even NaN) cannot reach the real frames
    latents, text, timestep, mask, _ = inputs
    model, padding = dit_model(), shard_indices(latents.shape[2]) >= latents.shape[2]
    with torch.no_grad():
        clean = model(shard(latents, 2), text, timestep, mask, num_frames=latents.shape[2]).sample
        junk = shard(latents, 2).masked_fill(padding[:, None, None], float("nan"))
        dirty = model(junk, text, timestep, mask, num_frames=latents.shape[2]).sample
    report["nan_padding_bit_equal"] = torch.equal(gather(clean, 2, length=5), gather(dirty, 2, length=5))
    assert report["nan_padding_bit_equal"], report
    for key in ("out_err", "ckpt_out_err"): assert report[key] <= FWD_ATOL, report
    for key in ("grad_rel", "ckpt_grad_rel"): assert report[key] <= GRAD_RTOL, report
    return report


def case_dit_dp(world):
    """4 processes, sp_size=2: the SP groups see different batches, frame counts, prompt lengths and text dropout (one
    group's only prompt dropped: zero text tokens); then the usual DP all-reduce of the gradients."""
    init_distributed(sp_size=world // 2, timeout_s=60)
    settings = [dict(seed=30, batch=2, frames=3, text_tokens=6, text_lengths=[6, 2]),
                dict(seed=31, batch=1, frames=5, text_tokens=8, text_lengths=[0])]
    first = dp_rank() * sp_size()  # broadcast within each SP group comes from that group's first global rank
    assert torch.equal(broadcast(torch.full((3,), float(dist.get_rank()))), torch.full((3,), float(first)))
    model = dit_model(seed=1)
    report, grads, _ = dit_compare(model, dit_inputs(**settings[dp_rank()]))
    assert report["out_err"] <= FWD_ATOL and report["grad_rel"] <= GRAD_RTOL, report
    # data parallel on top: summing over the DP group gives the sum of both groups' single-process gradients
    for name, p in model.named_parameters(): dist.all_reduce(grads[name], group=dp_group())
    with sequence_parallel(None):
        both = [dit_run(model, *dit_inputs(**s), sp=False)[1] for s in settings]
    report["dp_grad_rel"] = max(rel(grads[n], both[0][n] + both[1][n]) for n, _ in model.named_parameters())
    assert report["dp_grad_rel"] <= GRAD_RTOL, report
    return report | dict(dp_rank=dp_rank())


def case_dit_mismatch(world):
    "Ranks of one SP group disagree (prompt length; a wrong num_frames): the same clear error on every rank, no deadlock."
    init_distributed(sp_size=world, timeout_s=60)
    model, r = dit_model(), sp_rank()
    latents, text, timestep, mask, _ = dit_inputs(40, batch=1, frames=2, text_tokens=4 + r, text_lengths=[4 + r])
    with torch.no_grad():
        e1 = expect_error(lambda: model(latents, text, timestep, mask, num_frames=2), "disagree on text_tokens")
        e2 = expect_error(lambda: model(latents, text[:, :4], timestep, mask[:, :4], num_frames=2), "num_frames=2: sharded over")
    return dict(errors=[e1[:200], e2[:200]])


def case_dit_num_frames(world):
    """Under SP `num_frames` is required: 5 latent frames need padding on 2 and 4 ranks, and a shard cannot tell its
    padding frames from real ones. Without it: the same clear error on every rank; given on one rank only: an error too."""
    init_distributed(sp_size=world, timeout_s=60)
    model = dit_model()
    latents, text, timestep, mask, _ = dit_inputs(50, batch=2, frames=5, text_tokens=4, text_lengths=[4, 1])
    local, padded = shard(latents, 2), shard(latents, 2).shape[2] * world
    with torch.no_grad():
        e1 = expect_error(lambda: model(local, text, timestep, mask), "needs num_frames")
        e2 = expect_error(lambda: model(local, text, timestep, mask, num_frames=5 if sp_rank() == 0 else None),
                          "disagree on num_frames")
        # what the old default (every frame real) computed: the padding frames attended as real ones
        right = gather(model(local, text, timestep, mask, num_frames=5).sample, 2, length=5)
        padding_as_real = gather(model(local, text, timestep, mask, num_frames=padded).sample, 2, length=5)
    return dict(errors=[e1[:300], e2[:200]], padded=padded, padding_as_real_err=max_abs(padding_as_real, right))


CASES = dict(equal=case_equal, last_block=case_last_block, gather_grad=case_gather_grad, dp=case_dp, mismatch=case_mismatch, errors=case_errors,
             dit=case_dit, dit_dp=case_dit_dp, dit_mismatch=case_dit_mismatch,
             dit_num_frames=case_dit_num_frames)

if __name__ == "__main__":
    torch.manual_seed(0)
    world = int(os.environ["WORLD_SIZE"])
    # this level owns the process group (made once: torchrun's store cannot host a second one); each case opens its
    # own level on top and closes it, so the final destroy_distributed tears the process group down before exit
    init_distributed(sp_size=world, timeout_s=60)
    try:
        for name in sys.argv[1:]:
            try: report = CASES[name](world)
            finally: destroy_distributed()  # the case's init_distributed
            # one write() per line: the ranks share the pipe, and print() may split a line in two writes
            os.write(1, f"ok {name} rank={dist.get_rank()} {json.dumps(report)}\n".encode())
    finally:
        destroy_distributed()
        assert not dist.is_initialized(), "the process group outlived the worker's last destroy_distributed"
