"""`fastvideo demo` as a person meets it, on a small run: every stage, Ctrl-C in the fine-tune and a rerun that trains
only the steps after the checkpoint, a third run that trains and samples nothing, refusals of one line naming the flag,
`--overwrite` redoing only what changed."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).parent / "fastvideo")
# 100 fine-tune steps (checkpoint at 50): the second piece runs for seconds, time to press Ctrl-C in it
SMALL = {"n_videos": 4, "n_images": 2, "train_steps": 100, "lora_steps": 2, "distill_steps": 2, "train_batch_size": 2,
         "teacher_steps": 2, "student_steps": 2}


def flags(out, **changed):
    return ["demo", "--output_dir", str(out)] + [w for k, v in (SMALL | changed).items() for w in (f"--{k}", str(v))]


def log(out):
    "demo_log.jsonl: a record per stage per run."
    return [json.loads(l) for l in (out / "demo_log.jsonl").read_text().splitlines() if l.strip()]


def last_run(out):
    records = log(out)
    return {r["stage"].split(" ", 1)[1]: r for r in records if r["run_started"] == records[-1]["run_started"]}


def one_line(err):
    "The lines of stderr that are not progress bars or library warnings."
    lines = [l for l in err.replace("\r", "\n").splitlines() if l.strip()]
    return [l for l in lines if l.startswith("fastvideo ")]


def test_interrupt_resume_rerun_refuse_overwrite(tmp_path, cli):
    out = tmp_path / "demo"
    proc = subprocess.Popen([EXE, *flags(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoint, deadline = out / "finetune" / "checkpoint-50" / "COMPLETE", time.time() + 240
    while time.time() < deadline and not checkpoint.exists() and proc.poll() is None: time.sleep(0.05)
    if not checkpoint.exists():
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"no checkpoint-50 within 240 s: {proc.communicate()[1][-3000:]}")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group, in the fine-tune's second piece
    _, err = proc.communicate(timeout=120)
    assert (out / "finetune" / "final").exists() is False, "the fine-tune finished before Ctrl-C: the test saw no interrupt"
    assert proc.returncode == 130, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert one_line(err) == ["fastvideo demo: interrupted; finished stages and the latest checkpoint of a training are "
                             "kept: rerun the same command to resume"], err[-2000:]
    first = last_run(out)
    assert list(first) == ["toy data", "preprocess"], first  # the stages that finished before Ctrl-C

    started = time.time()
    code, err = cli(*flags(out))  # the same command again: resumes
    assert code == 0, err[-3000:]
    second = last_run(out)
    assert list(second) == ["toy data", "preprocess", "fine-tune", "LoRA", "distill", "sample", "report"]
    assert second["toy data"]["did"].startswith("kept") and "0 items encoded now" in second["preprocess"]["did"]
    # only the steps after the checkpoint were trained, from the checkpoint: the log has each step once
    assert second["fine-tune"]["pieces"] == [{"from": 50, "to": 100, "trained": 50}], second["fine-tune"]
    steps = [json.loads(l)["step"] for l in (out / "finetune" / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert steps == list(range(1, 101))
    report = json.loads((out / "report.json").read_text())
    assert {"toy@2", "toy-fast@2"} <= set(report["samples"]) and len(report["samples"]) == 5
    for name in ("toy@2", "toy-fast@2"):
        s = report["samples"][name]
        assert s["scores"]["n"] == 6 and 0 <= s["scores"]["mean"] <= 1 and len(s["videos"]) == 6
        assert all((out / v).is_file() for v in s["videos"])
    assert report["sample_seeds"] == list(range(2025, 2031))
    assert not set(report["sample_seeds"]) & {int(k) for k in report["training_seeds"]}
    assert report["preprocess"]["listed"] == 6 and report["data"]["mean"] == 1.0
    print(f"resumed run: {time.time() - started:.1f}s")

    started = time.time()
    code, err = cli(*flags(out))  # a third run: nothing to train or sample
    took = time.time() - started
    assert code == 0, err[-3000:]
    third = last_run(out)
    for stage in ("fine-tune", "LoRA", "distill"): assert third[stage]["did"] == "kept (finished earlier)", third[stage]
    assert all(json.loads((out / "samples" / f / "settings.json").read_text())["generated_now"] == 0
               for f in ("toy_2", "toy_fast_2", "fine_tuned_2", "toy_lora_2", "distilled_2"))
    assert took < 30, f"a rerun of a finished demo took {took:.1f}s"

    code, err = cli(*flags(out, lora_steps=3))  # other settings in an existing demo: refused, nothing touched
    assert code == 2 and err.strip().splitlines() == [
        f"fastvideo demo: error: --output_dir {out} holds a demo made with other settings (--lora_steps was 2, now 3); "
        "use another --output_dir, the old settings, or --overwrite to redo the stages they change"], err
    assert last_run(out) == third

    ft_weights = next((out / "finetune" / "final" / "transformer").glob("*.safetensors")).stat().st_mtime_ns
    code, err = cli(*flags(out, lora_steps=3), "--overwrite")  # redoes the LoRA and its samples, nothing else
    assert code == 0, err[-3000:]
    fourth = last_run(out)
    assert fourth["LoRA"]["did"] == "steps 1..3" and fourth["fine-tune"]["did"].startswith("kept")
    assert next((out / "finetune" / "final" / "transformer").glob("*.safetensors")).stat().st_mtime_ns == ft_weights
    made = {f: json.loads((out / "samples" / f / "settings.json").read_text())["generated_now"] for f in ("toy_2", "toy_lora_2")}
    assert made == {"toy_2": 0, "toy_lora_2": 6}, made
    assert json.loads((out / "demo_settings.json").read_text())["lora_steps"] == 3


@pytest.mark.parametrize("extra, names", [
    (["--train_batch_size", "0"], "--train_batch_size 0: expected a positive integer"),
    (["--distill_steps", "-5"], "--distill_steps -5: expected an integer >= 0"),
    (["--sample_seed", "40"], "--sample_seed 40: the captions would be sampled from seeds 40..45, and seed 42 was used by "
                              "the demo's fine-tune, LoRA and distillation"),
    (["--seed", "2026"], "seed 2026 was used by the demo's toy data (--seed)"),
])
def test_bad_flags_are_one_line_naming_the_flag(tmp_path, cli, extra, names):
    code, err = cli("demo", "--output_dir", tmp_path / "d", *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and names in err, err
    assert not (tmp_path / "d").exists(), "a refused demo writes nothing"


def test_refuses_a_folder_that_holds_something_else(tmp_path, cli):
    (tmp_path / "mine").mkdir(); (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, err = cli("demo", "--output_dir", tmp_path / "mine")
    assert code == 2 and "not empty and holds no demo" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("")
    code, err = cli("demo", "--output_dir", tmp_path / "file")
    assert code == 2 and "is a file; expected a folder" in err, err
