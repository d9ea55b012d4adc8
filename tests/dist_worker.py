"""Worker that tests/test_distributed.py runs under torchrun: `torchrun --nproc_per_node N tests/dist_worker.py CASE ...`.

Every rank builds the same random inputs, runs the sequence-parallel code and checks it against full attention on
one process. Each passed case prints one line `ok CASE rank=R {json}`; a failed check raises (non-zero exit).
"""
import json, os, sys
from datetime import timedelta

import torch
import torch.distributed as dist

from fastvideo.attention import (all_to_all_heads_to_seq, all_to_all_seq_to_heads, attention, count_all_to_all,
                                 ulysses_all_to_all_bytes, ulysses_attention)
from fastvideo.distributed import (destroy_distributed, dp_rank, gather, init_distributed, sequence_parallel, shard,
                                   shard_indices, sp_group, sp_rank, sp_size)

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


CASES = dict(equal=case_equal, last_block=case_last_block, gather_grad=case_gather_grad, dp=case_dp, mismatch=case_mismatch, errors=case_errors)

if __name__ == "__main__":
    torch.manual_seed(0)
    try:
        for name in sys.argv[1:]:
            report = CASES[name](int(os.environ["WORLD_SIZE"]))
            # one write() per line: the ranks share the pipe, and print() may split a line in two writes
            os.write(1, f"ok {name} rank={dist.get_rank()} {json.dumps(report)}\n".encode())
    finally:
        destroy_distributed()
