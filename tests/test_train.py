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


# ---- a real kill: `fastvideo train` SIGKILLed mid-run, then resumed, equals the uninterrupted run ----
import os, signal, subprocess, sys, time
import torch
from safetensors.torch import load_file


def tiny_dataset(root: Path, n: int = 8) -> Path:
    "Preprocessing's layout for the toy model (12 latent channels, 32-wide captions of 16 tokens): videos and images."
    from fastvideo.data import random_latent_dataset
    return random_latent_dataset(root, [(12, 2 if i % 4 else 1, 4, 4) for i in range(n)], text_tokens=16, seed=3)


def train_cmd(data, out, *extra):
    return [sys.executable, "-m", "fastvideo.cli", "train", "--data_json_path", str(data), "--output_dir", str(out),
            "--max_train_steps", "60", "--checkpointing_steps", "4", "--train_batch_size", "2", "--learning_rate", "1e-3",
            "--gradient_accumulation_steps", "2", "--ema_decay", "0.9", "--cfg", "0.2", *extra]


def run_one(data, out, *extra):
    "`fastvideo train` on one process, one thread (as each torchrun rank here); fails the test with its stderr if it fails."
    done = subprocess.run(train_cmd(data, out, *extra), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def run_two(data, out, *extra):
    "`fastvideo train` under torchrun on two processes; fails the test with their output if it fails."
    done = torchrun(["-m", *train_cmd(data, out, *extra)[2:]], nproc_per_node=2, timeout=300, capture=True)
    assert done.returncode == 0, done.stdout[-4000:]


def losses(out):  # the last logged loss of each step (a resumed run logs the steps after its checkpoint again)
    logged = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return {m["step"]: m["loss"] for m in logged}


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    data = tiny_dataset(tmp_path / "data")
    run_one(data, tmp_path / "full")
    proc = subprocess.Popen(train_cmd(data, tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (tmp_path / "killed" / "checkpoint-8" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (tmp_path / "killed" / "final").exists()  # killed mid-run, not after it
    # resumed with a loader process working ahead of the step: the same batches, in the same order
    again = subprocess.run(train_cmd(data, tmp_path / "killed", "--resume_from_checkpoint", "latest", "--dataloader_num_workers", "1"), env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert losses(tmp_path / "killed") == losses(tmp_path / "full")  # every step's loss, bit for bit
    a = load_file(tmp_path / "full" / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input_is_named(tmp_path, capsys):
    from fastvideo.cli import main
    data = tiny_dataset(tmp_path / "data", n=2)
    def run(*extra, data=data, out=tmp_path / "out"):  # in this process: `fastvideo train ...` as the console script runs it
        try: main(train_cmd(data, out, *extra)[3:])
        except SystemExit as e: return e.code, capsys.readouterr().err
        return 0, capsys.readouterr().err
    code, err = run("--train_batch_size", "0")
    assert code == 2 and "--train_batch_size 0: expected a positive integer" in err, err
    code, err = run("--dataloader_num_workers", "-1")
    assert code == 2 and "--dataloader_num_workers -1: expected an integer >= 0" in err, err
    items = json.loads(data.read_text()); del items[1]["latent_path"]
    (tmp_path / "data" / "broken.json").write_text(json.dumps(items))
    code, err = run(data=tmp_path / "data" / "broken.json")
    assert code == 2 and "broken.json: item 1 has no latent_path" in err, err
    items = json.loads(data.read_text()); items[0]["latent_shape"][0] = 16
    (tmp_path / "data" / "channels.json").write_text(json.dumps(items))
    code, err = run(data=tmp_path / "data" / "channels.json")
    assert code == 2 and "has 16 latent channels; the model takes 12" in err, err
    code, err = run("--max_train_steps", "4")
    assert code == 0, err
    (tmp_path / "out" / "checkpoint-6.tmp").mkdir()  # a save killed half-way: never counted as a checkpoint
    code, err = run("--max_train_steps", "4")
    assert code == 2 and "holds checkpoints of an earlier run" in err, err
    code, err = run("--max_train_steps", "6", "--resume_from_checkpoint", "latest")  # resumes from checkpoint-4
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]


def test_from_scratch_starts_at_the_kits_initialisation(tmp_path):
    "`--from_scratch`: the toy folder's config, `init_weights(seed)`'s values (not its weights), then AdamW's small steps."
    from fastvideo import toy
    from fastvideo.dit import MochiDiT, init_weights
    data = tiny_dataset(tmp_path / "data")
    run_one(data, tmp_path / "out", "--from_scratch", "--seed", "7", "--max_train_steps", "2", "--checkpointing_steps", "0",
            "--gradient_accumulation_steps", "1", "--ema_decay", "0")
    trained = final_weights(tmp_path / "out")
    start = init_weights(MochiDiT.from_config("toy"), seed=7).state_dict()
    shipped = load_file(toy.model_path() / "transformer" / "diffusion_pytorch_model.safetensors")
    # AdamW moves each weight by at most ~lr per step (plus the decay), so 2 steps at 1e-3 stay within 2.1e-3
    assert max((trained[k] - start[k]).abs().max().item() for k in start) <= 2.1e-3
    assert trained["proj_out.weight"].abs().max() <= 2.1e-3 < shipped["proj_out.weight"].abs().max()  # zero at the start


def final_weights(out):
    return load_file(out / "final" / "transformer" / "diffusion_pytorch_model.safetensors")


def compare_runs(a, b):
    "Largest relative difference of the logged losses and of the final weights of two runs."
    la, lb = losses(a), losses(b)
    assert la.keys() == lb.keys()
    loss_rel = max(abs(la[s] - lb[s]) / abs(lb[s]) for s in la)
    wa, wb = final_weights(a), final_weights(b)
    weight_rel = max(((wa[k] - wb[k]).abs().max() / wb[k].abs().max()).item() for k in wa)
    return loss_rel, weight_rel


def test_two_processes_and_sequence_parallel_equal_one(tmp_path):
    "1 process with 2 samples a batch == 2 data-parallel processes with 1 each == SP 2 (both on each sample's frames)."
    data = tiny_dataset(tmp_path / "data")
    short = ("--max_train_steps", "6", "--checkpointing_steps", "0", "--ema_decay", "0")
    run_one(data, tmp_path / "one", *short)
    for name, extra in (("dp2", ("--train_batch_size", "1")), ("sp2", ("--sp_size", "2"))):
        run_two(data, tmp_path / name, *short, *extra)
        loss_rel, weight_rel = compare_runs(tmp_path / name, tmp_path / "one")
        # every step's loss to 1e-5; weights after 6 AdamW steps to 2e-3: Adam divides each gradient by its own size,
        # so where a gradient is small, the float-sum order (other on 2 processes) moves the update (4e-4 measured;
        # a wrong gradient scale would be off by tens of percent)
        assert loss_rel <= 1e-5 and weight_rel <= 2e-3, (name, loss_rel, weight_rel)


def test_two_loopback_nodes_and_sharding_modes_equal_one_process(tmp_path):
    "Two torchrun 'nodes' of one process each on 127.0.0.1, and --fsdp_sharding none / hybrid, train as 1 process does."
    import socket
    data = tiny_dataset(tmp_path / "data")
    short = ("--max_train_steps", "4", "--checkpointing_steps", "0", "--ema_decay", "0")
    run_one(data, tmp_path / "one", *short)
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    args = train_cmd(data, tmp_path / "nodes", *short, "--train_batch_size", "1")[2:]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={r}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", *args],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    outs = [n.communicate(timeout=300)[0] for n in nodes]
    assert all(n.returncode == 0 for n in nodes), outs[0][-3000:] + outs[1][-3000:]
    for name in ("none", "hybrid"):
        run_two(data, tmp_path / name, *short, "--train_batch_size", "1", "--fsdp_sharding", name)
    for name in ("nodes", "none", "hybrid"):
        loss_rel, weight_rel = compare_runs(tmp_path / name, tmp_path / "one")
        assert loss_rel <= 1e-5 and weight_rel <= 2e-3, (name, loss_rel, weight_rel)


def test_resume_on_two_processes_with_ema_is_bit_identical(tmp_path):
    "EMA tensors are DTensors sharded as the parameters: a 2-process save and resume must restore every rank's shard."
    import shutil
    data = tiny_dataset(tmp_path / "data")
    def run(out, steps, *extra): run_two(data, out, "--max_train_steps", str(steps), "--train_batch_size", "1", *extra)
    run(tmp_path / "full", 8)
    run(tmp_path / "cut", 6)
    shutil.rmtree(tmp_path / "cut" / "checkpoint-6"); shutil.rmtree(tmp_path / "cut" / "final")  # as if killed after step 4's save
    run(tmp_path / "cut", 8, "--resume_from_checkpoint", "latest")
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "cut")  # the EMA weights (--ema_decay 0.9)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and they are the EMA's: one process with the same global batch exports the same average (raw weights would
    # differ from it by far more than the float-order noise allowed here)
    run_one(data, tmp_path / "one", "--max_train_steps", "8")
    loss_rel, weight_rel = compare_runs(tmp_path / "full", tmp_path / "one")
    assert loss_rel <= 1e-5 and weight_rel <= 2e-3, (loss_rel, weight_rel)


def test_validation_during_training(tmp_path, capsys):
    "Every --validation_steps: mp4s, a contact sheet and a scored line of validation.jsonl; a missing prompt dir is named."
    from fastvideo.cli import main
    data = tiny_dataset(tmp_path / "data", n=2)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "prompts.json").write_text(json.dumps([{"caption": "a red circle moving left"}]))
    flags = ("--max_train_steps", "4", "--validation_steps", "2", "--validation_sampling_steps", "2")
    try: main(train_cmd(data, tmp_path / "nodir", *flags, "--validation_prompt_dir", str(tmp_path / "missing"))[3:])
    except SystemExit as e: assert e.code == 2
    assert "missing: no prompts.json" in capsys.readouterr().err
    main(train_cmd(data, tmp_path / "out", *flags, "--validation_prompt_dir", str(tmp_path / "val"))[3:])
    records = [json.loads(l) for l in (tmp_path / "out" / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and set(records[0]["scores"]) >= {"color", "shape", "motion", "mean"}
    assert sorted(p.name for p in (tmp_path / "out" / "validation" / "step-4").iterdir()) == ["000.mp4", "contact_sheet.png"]


def test_bf16_mixed_precision_and_master_weights_track_fp32(tmp_path):
    "bf16 compute (FSDP2's policy on 2 processes, autocast on 1) and bf16 master weights stay within 5% of fp32's losses."
    data = tiny_dataset(tmp_path / "data")
    short = ("--max_train_steps", "6", "--checkpointing_steps", "0", "--ema_decay", "0")
    run_one(data, tmp_path / "fp32", *short)
    run_one(data, tmp_path / "bf16_1", *short, "--mixed_precision", "bf16")
    for name, extra in (("bf16_2", ("--mixed_precision", "bf16")), ("master_bf16", ("--master_weight_type", "bf16"))):
        run_two(data, tmp_path / name, *short, "--train_batch_size", "1", *extra)
    ref = losses(tmp_path / "fp32")
    for name in ("bf16_1", "bf16_2", "master_bf16"):
        got = losses(tmp_path / name)
        assert got.keys() == ref.keys() and max(abs(got[s] - ref[s]) / ref[s] for s in ref) < 0.05, (name, got, ref)


def test_finetune_run_notebook_on_two_processes(tmp_path):
    "`fastvideo launch nbs/runs/finetune.ipynb --nproc_per_node 2`: rank 0's record shows the run and its curve."
    import nbformat
    from fastvideo.cli import main
    data = tiny_dataset(tmp_path / "data")
    record = tmp_path / "finetune.ipynb"
    main(["launch", str(Path(__file__).parents[1] / "nbs/runs/finetune.ipynb"), "--nproc_per_node", "2", "-p", "data_json_path",
          str(data), "-p", "output_dir", str(tmp_path / "out"), "-p", "max_train_steps", "4", "--output", str(record),
          "--timeout", "300"])
    nb = nbformat.read(record, 4)
    texts = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "rank 0 of 2" in texts and "rank 0: 4 steps, last loss" in texts, texts[-2000:]
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert (tmp_path / "out" / "final" / "transformer" / "config.json").exists()
