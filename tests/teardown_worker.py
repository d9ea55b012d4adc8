"""Worker for tests/test_teardown.py: `torchrun --nproc_per_node N tests/teardown_worker.py CASES`.

The misuse that aborted tests/dist_worker.py at exit: CASES cases each call `init_distributed` and run collectives
on its groups; one `destroy_distributed` in `finally` undoes one level; then the interpreter exits. A gloo thread
still alive at interpreter finalisation that drops the last reference to a tensor needs the GIL, is killed, and
`std::terminate` aborts the process. The gloo threads run at the lowest priority so that they lag behind the main
thread, as they do on a loaded machine: the old code then aborted in most runs.
"""
import os, sys, threading

import torch
import torch.distributed as dist

from fastvideo.distributed import destroy_distributed, dp_group, init_distributed, sp_group


def lower_other_threads():
    "nice 19 for every thread of this process but the main one (Linux: niceness is per thread)."
    main = threading.get_native_id()
    for tid in map(int, os.listdir("/proc/self/task")):
        if tid == main: continue
        try: os.setpriority(os.PRIO_PROCESS, tid, 19)
        except ProcessLookupError: pass  # the thread ended in between


if __name__ == "__main__":
    world = int(os.environ["WORLD_SIZE"])
    try:
        for _ in range(int(sys.argv[1])):
            init_distributed(sp_size=world, backend="gloo", timeout_s=60)
            lower_other_threads()
            for group in (sp_group(), dp_group()):  # temporaries: the gloo thread may hold their last reference
                total = torch.ones(4096)
                dist.all_reduce(total, group=group)
                assert total[0].item() == dist.get_world_size(group)
    finally:
        destroy_distributed()
