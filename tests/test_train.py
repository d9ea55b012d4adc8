"""Fine-tuning on several CPU processes (gloo): FSDP2 against one process on the same global batch."""
import json, re
from pathlib import Path
from fastvideo.launch import torchrun

WORKER = Path(__file__).with_name("train_worker.py")


def test_fsdp2_on_two_processes_equals_one():
    done = torchrun([WORKER, "fsdp"], nproc_per_node=2, timeout=180, capture=True)
    assert done.returncode == 0, done.stdout[-6000:]
    reports = [json.loads(m) for m in re.findall(r"^ok fsdp rank=\d+ (\{.*\})$", done.stdout, flags=re.M)]
    assert len(reports) == 2, done.stdout[-3000:]
    for r in reports:
        assert r["local_rows"] * 2 == r["full_rows"], r  # each rank stores half of every weight
        assert r["grad_rel"] <= 1e-5 and r["weight_rel"] <= 1e-5, r
        assert r["excluded"] < 100, r  # only the exactly-zero gradients (the pooler's key bias) are left out
