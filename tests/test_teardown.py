"""Unbalanced `init_distributed` / `destroy_distributed` must not abort the process at exit.

tests/teardown_worker.py does what tests/dist_worker.py used to do: one `init_distributed` per case, one
`destroy_distributed` at the end, with its gloo threads at the lowest priority (a loaded machine). The old code left
the process group alive at exit and a gloo thread aborted the process (`terminate called without an active
exception`); now the exit hook tears it down. A few runs keep this quick. Measured with two busy-loop CPU hogs beside
it, 20 runs of `torchrun --standalone --nproc_per_node=4 tests/teardown_worker.py 9`: old code 20/20 failed, new 0/20.
"""
from pathlib import Path

import pytest

from fastvideo.launch import torchrun

WORKER = Path(__file__).with_name("teardown_worker.py")
RUNS, CASES = 3, 9


@pytest.mark.parametrize("run", range(RUNS))
def test_unbalanced_init_exits_cleanly(run):
    done = torchrun([WORKER, CASES], nproc_per_node=4, timeout=120, capture=True)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "terminate called" not in done.stdout, done.stdout[-4000:]
