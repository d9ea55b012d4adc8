"""`fastvideo launch`: papermill + torchrun, rank 0's notebook as the record, a failing rank fails the launch."""
import re
from pathlib import Path

import nbformat
import pytest

from fastvideo import cli as fastvideo_cli
from fastvideo.launch import LaunchError, _fresh_output, launch, parse_parameter

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


def cli(argv):
    "The `fastvideo` command itself: a `launch` missing from it fails the tests."
    return fastvideo_cli.main(argv)


def small_notebook(path, *cells, parameters="steps = 1  # how many"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def test_sp_check_on_two_processes(tmp_path, capfd):
    out = tmp_path / "sp_check.ipynb"
    cli(["launch", str(ROOT / "nbs/runs/sp_check.ipynb"), "--nproc_per_node", "2", "-p", "latent_frames", "3",
         "-p", "atol", "1e-5", "--output", str(out), "--timeout", str(TIMEOUT)])
    printed = "".join(capfd.readouterr())  # the ranks' and kernels' output too (file descriptors, not sys.stdout)
    for noise in ("without encryption", "WARNING", "OMP_NUM_THREADS", "****"):
        assert noise not in printed, f"launch printed {noise!r}:\n{printed[-3000:]}"
    assert printed.count("[launch]") == 1, printed
    nb = nbformat.read(out, 4)
    texts = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "rank 0 of 2, sp_size 2" in texts and "max |SP - one process| on 2 process(es)" in texts
    assert "latent_frames = 3" in "".join(c.source for c in nb.cells)  # papermill's injected parameters
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_a_failing_rank_fails_the_launch(tmp_path, capsys):
    # rank 1 raises; rank 0 waits in a barrier for it and must be stopped by torchrun, not left hanging
    nb = small_notebook(tmp_path / "fail.ipynb",
                        "import os, torch.distributed as dist\nfrom fastvideo.distributed import init_distributed\n"
                        "state = init_distributed(sp_size=2)",
                        "if state.rank == 1: raise ZeroDivisionError('rank one divides by zero')",
                        "dist.barrier()")
    with pytest.raises(SystemExit) as exit:
        cli(["launch", str(nb), "--nproc_per_node", "2", "--output", str(tmp_path / "out.ipynb"), "--timeout", str(TIMEOUT)])
    assert exit.value.code == 1
    err = capsys.readouterr().err
    assert "fastvideo launch: error:" in err and "rank 1 failed in cell [3]: ZeroDivisionError: rank one divides by zero" in err


def test_launch_raises_launch_error_on_one_process(tmp_path):
    nb = small_notebook(tmp_path / "fail1.ipynb", "assert steps == 2, f'steps={steps}'")
    with pytest.raises(LaunchError, match=r"rank 0 failed in cell \[3\]: AssertionError: steps=3"):
        launch(nb, 1, {"steps": 3}, tmp_path / "o.ipynb", timeout=TIMEOUT)
    assert (tmp_path / "o.ipynb").exists()  # rank 0's notebook, error included, is kept


def test_parameters():
    assert [parse_parameter(v) for v in ["3", "0.5", "True", "None", "x1"]] == [3, 0.5, True, None, "x1"]
    with pytest.raises(ValueError, match="-p stpes: not in the parameters cell"):
        launch(ROOT / "nbs/runs/sp_check.ipynb", 2, {"stpes": 1})


def test_every_parameters_cell_parses_completely():
    "papermill drops a line it cannot parse with only a log message; then `-p NAME` would be refused as unknown."
    import glob, json
    from fastvideo.launch import notebook_parameters
    root = Path(__file__).parent.parent / "nbs"
    notebooks = [nb for nb in glob.glob(str(root / "**/*.ipynb"), recursive=True)
                 if any("parameters" in c.get("metadata", {}).get("tags", []) for c in json.load(open(nb))["cells"])]
    assert notebooks, "no run notebook found"
    for nb in notebooks:
        cell = next(c for c in json.load(open(nb))["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
        names = [l.split(":")[0].split("=")[0].strip() for l in "".join(cell["source"]).splitlines()
                 if l.strip() and not l.lstrip().startswith("#")]
        assert list(notebook_parameters(nb)) == names, nb


def test_an_existing_output_is_refused_unless_overwrite(tmp_path, capsys):
    nb = small_notebook(tmp_path / "small.ipynb", "print('new run', steps)")
    old = tmp_path / "out.ipynb"
    old.write_text("an earlier run's record")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        launch(nb, 1, output=old, timeout=TIMEOUT)
    with pytest.raises(SystemExit) as exit:
        cli(["launch", str(nb), "--output", str(old), "--timeout", str(TIMEOUT)])
    assert exit.value.code == 2 and "fastvideo launch: error: --output" in capsys.readouterr().err
    assert old.read_text() == "an earlier run's record"  # refused before anything ran
    cli(["launch", str(nb), "--output", str(old), "--overwrite", "-p", "steps", "7", "--timeout", str(TIMEOUT)])
    assert "new run 7" in "".join(o.get("text", "") for c in nbformat.read(old, 4).cells if c.cell_type == "code"
                                  for o in c.outputs)


def test_default_output_is_fresh(tmp_path, monkeypatch):
    "Without --output, a run never replaces an earlier one's record."
    monkeypatch.chdir(tmp_path)
    nb = small_notebook(tmp_path / "small.ipynb", "print('hi')")
    earlier = tmp_path / "outputs/runs/small.ipynb"  # where a run used to go
    earlier.parent.mkdir(parents=True)
    earlier.write_text("earlier")
    out = launch(nb, 1, timeout=TIMEOUT)
    assert re.fullmatch(r"small-\d{8}-\d{6}\.ipynb", out.name) and out.parent == Path("outputs/runs"), out
    assert (tmp_path / out).is_file() and earlier.read_text() == "earlier"
    monkeypatch.setattr("time.strftime", lambda fmt: "20260101-000000")
    (tmp_path / "outputs/runs/small-20260101-000000.ipynb").write_text("same second")
    (tmp_path / "outputs/runs/small-20260101-000000-2.ipynb").write_text("same second")
    assert _fresh_output(nb) == Path("outputs/runs/small-20260101-000000-3.ipynb")


def test_a_library_init_destroy_inside_a_launched_notebook_keeps_its_group(tmp_path):
    "What `fastvideo.sampling.sample` does (init_distributed + destroy_distributed) leaves the notebook's group alone."
    nb = small_notebook(tmp_path / "nested.ipynb",
                        "import torch.distributed as dist\nfrom fastvideo.distributed import init_distributed, destroy_distributed\n"
                        "state = init_distributed(sp_size=2)",
                        "init_distributed(sp_size=1)\ntry: dist.barrier()\nfinally: destroy_distributed()",
                        "assert dist.is_initialized(); dist.barrier()\n"
                        "from fastvideo.distributed import sp_size; assert sp_size() == 2\nprint('still', dist.get_world_size())",
                        "destroy_distributed(); assert not dist.is_initialized()")
    out = launch(nb, 2, output=tmp_path / "nested.out.ipynb", timeout=TIMEOUT)
    assert "still 2" in "".join(o.get("text", "") for c in nbformat.read(out, 4).cells if c.cell_type == "code"
                                for o in c.outputs)


def test_a_broken_notebook_is_named(tmp_path, capsys):
    broken = tmp_path / "broken.ipynb"
    broken.write_text('{"cells": [')
    with pytest.raises(SystemExit) as exit:
        cli(["launch", str(broken)])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and f"notebook {broken} is not a readable .ipynb" in err and "Traceback" not in err, err
