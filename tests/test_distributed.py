"""Sequence parallelism on several CPU processes (gloo): Ulysses attention and the whole MochiDiT, outputs and
gradients, equal one process.

Each torchrun start costs a few seconds, so one run per world size executes every case of tests/dist_worker.py and
the tests below read its report. A deadlock fails the run at the timeout instead of hanging the suite.
"""
import json
from pathlib import Path

import pytest

from fastvideo.distributed import init_distributed, TORCHRUN_ENV
from fastvideo.launch import torchrun

WORKER = Path(__file__).with_name("dist_worker.py")
TIMEOUT = 120
CASES = {2: ["equal", "last_block", "gather_grad", "mismatch", "errors", "dit", "dit_mismatch", "dit_num_frames"],
         4: ["equal", "last_block", "dp", "mismatch", "errors", "dit", "dit_dp", "dit_mismatch", "dit_num_frames"]}


def run_worker(world):
    done = torchrun([WORKER, *CASES[world]], nproc_per_node=world, timeout=TIMEOUT, capture=True)
    assert done.returncode == 0, done.stdout[-6000:]
    reports = {}
    for line in done.stdout.splitlines():
        if line.startswith("ok "):
            _, case, rank, report = line.split(" ", 3)
            reports[case, int(rank.removeprefix("rank="))] = json.loads(report)
    return reports


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def world(request):
    return request.param, run_worker(request.param)


def for_all_ranks(world, case):
    n, reports = world
    got = [reports.get((case, r)) for r in range(n)]
    assert all(g is not None for g in got), f"case {case!r} did not pass on every rank: {sorted(reports)}"
    return got


def test_outputs_and_gradients_equal_one_process(world):
    for r in for_all_ranks(world, "equal"):  # 5 frames over 2 or 4 ranks: padding; prompts of lengths 6 and 2
        assert r["vis_err"] <= 1e-5 and r["txt_err"] <= 1e-5, r
        assert r["vis_grad_rel"] <= 1e-4 and r["txt_grad_rel"] <= 1e-4, r


def test_last_block_without_text_queries(world):
    for r in for_all_ranks(world, "last_block"):
        assert r["vis_err"] <= 1e-5 and r["vis_grad_rel"] <= 1e-4 and r["txt_grad_rel"] <= 1e-4, r
        assert r["bytes_fwd"] == r["formula_fwd"], r


def test_byte_counter_equals_ulysses_formula(world):
    for r in for_all_ranks(world, "equal"):
        assert r["bytes_fwd"] == r["formula_fwd"] > 0, r
        assert r["bytes_fwd"] + r["bytes_bwd"] == r["formula_fwd_bwd"], r
        assert (r["calls_fwd"], r["calls_bwd"]) == (4, 4), r


def test_ranks_that_disagree_get_an_error_not_a_deadlock(world):
    for r in for_all_ranks(world, "mismatch"):
        assert "disagree on text_tokens" in r["errors"][0] and "disagree on local_tokens" in r["errors"][1]


def test_heads_and_world_size_errors(world):
    n, _ = world
    for r in for_all_ranks(world, "errors"):
        assert f"heads={n + 1} is not divisible by sp_size={n}" in r["errors"][0]
        assert f"sp_size={n + 1} must divide the world size WORLD_SIZE={n}" in r["errors"][1]


def test_gather_backward_is_reduce_scatter(world):
    if world[0] != 2: pytest.skip("run on 2 processes")
    for_all_ranks(world, "gather_grad")


def test_data_parallel_groups_differ_without_deadlock(world):
    "4 processes, sp_size=2: the two SP groups see different batch sizes, frame counts, prompt lengths, text dropout."
    if world[0] != 4: pytest.skip("run on 4 processes")
    reports = for_all_ranks(world, "dp")
    assert {r["frames"] for r in reports} == {5, 3} and {r["dp_rank"] for r in reports} == {0, 1}
    for r in reports:
        assert r["vis_err"] <= 1e-5 and r["txt_err"] <= 1e-5 and r["vis_grad_rel"] <= 1e-4 and r["txt_grad_rel"] <= 1e-4, r
        assert r["bytes_fwd"] == r["formula_fwd"], r


def test_dit_under_sp_equals_one_process(world):
    "MochiDiT on frame shards (5 latent frames over 2 or 4 ranks: padding; prompts of 5 and 0 tokens), 3 random blocks."
    for r in for_all_ranks(world, "dit"):
        assert r["sp_size"] == world[0] and r["frames"] == 5 and r["text_lengths"] == [5, 0], r
        assert r["out_err"] <= 1e-5 and r["grad_rel"] <= 1e-4, r
        assert r["ckpt_out_err"] <= 1e-5 and r["ckpt_grad_rel"] <= 1e-4, r  # checkpointed blocks recompute under SP too
        assert r["nan_padding_bit_equal"], r  # NaN in the padding frames changes no real output


def test_dit_ranks_that_disagree_get_an_error_not_a_deadlock(world):
    for r in for_all_ranks(world, "dit_mismatch"):
        assert "MochiDiT: the ranks of the SP group disagree on text_tokens" in r["errors"][0], r
        assert "num_frames=2: sharded over" in r["errors"][1], r


def test_dit_under_sp_requires_num_frames(world):
    "5 latent frames sharded over 2 or 4 ranks: without num_frames the padding frames would count as real, silently."
    n, _ = world
    for r in for_all_ranks(world, "dit_num_frames"):
        assert f"MochiDiT under sequence parallelism (sp_size={n}) needs num_frames" in r["errors"][0], r
        assert "num_frames=latents.shape[2]" in r["errors"][0], r
        assert "disagree on num_frames" in r["errors"][1], r
        assert r["padded"] > 5 and r["padding_as_real_err"] > 1e-2, r  # the mistake the error prevents is not small


def test_dit_data_parallel_groups_differ_without_deadlock(world):
    "4 processes, sp_size=2: different batches, frame counts, prompt lengths, one group's only prompt dropped."
    if world[0] != 4: pytest.skip("run on 4 processes")
    reports = for_all_ranks(world, "dit_dp")
    assert {r["frames"] for r in reports} == {3, 5} and {r["dp_rank"] for r in reports} == {0, 1}
    for r in reports:
        assert r["out_err"] <= 1e-5 and r["grad_rel"] <= 1e-4 and r["dp_grad_rel"] <= 1e-4, r


def test_missing_torchrun_env(monkeypatch):
    for k in TORCHRUN_ENV: monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match=r"missing RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT\.(.|\n)*torchrun --nproc_per_node N"):
        init_distributed(sp_size=2)
    assert init_distributed(sp_size=1).world_size == 1  # one process without torchrun is fine


def test_world_size_not_divisible(monkeypatch):
    for k, v in dict(RANK=0, WORLD_SIZE=6, LOCAL_RANK=0, MASTER_ADDR="localhost", MASTER_PORT=1).items():
        monkeypatch.setenv(k, str(v))
    with pytest.raises(ValueError, match="sp_size=4 must divide the world size WORLD_SIZE=6"):
        init_distributed(sp_size=4)


def test_nested_init_keeps_the_callers_process_group(monkeypatch):
    "A library function's init + destroy inside a launched notebook leaves the notebook's process group alone."
    import socket
    import torch.distributed as dist
    from fastvideo import distributed as fd
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    for k, v in dict(RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=port).items():
        monkeypatch.setenv(k, str(v))
    assert not dist.is_initialized()
    try:
        outer = fd.init_distributed(backend="gloo")
        assert outer.owns_process_group and dist.is_initialized()
        with fd.sequence_parallel(outer.sp_group):
            inner = fd.init_distributed(backend="gloo")
            assert not inner.owns_process_group
            fd.destroy_distributed()  # the library's finally
            assert dist.is_initialized(), "the inner destroy tore down the caller's process group"
            assert fd._state is outer and fd.sp_group() is outer.sp_group  # the caller's SP state is back
        fd.destroy_distributed()  # the caller's
        assert not dist.is_initialized()
        assert fd._state == fd.ParallelState()
    finally:
        if dist.is_initialized(): dist.destroy_process_group()
        fd._state = fd.ParallelState(); fd._group_stack.clear(); fd._outer.clear()


def test_nested_all_to_all_counters(monkeypatch):
    "An inner count_all_to_all block must not take the outer counter with it when their counts are equal."
    import torch
    from fastvideo import attention
    monkeypatch.setattr(attention.dist, "all_to_all_single", lambda out, inp, group=None: out.copy_(inp))
    with attention.count_all_to_all() as total:
        with attention.count_all_to_all() as inner:
            attention._all_to_all(torch.zeros(2, 3), None)
        attention._all_to_all(torch.zeros(2, 3), None)
    assert (total.calls, inner.calls) == (2, 1) and attention._counters == []
