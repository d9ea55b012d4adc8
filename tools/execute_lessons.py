"""Execute lesson notebooks in place, so that their committed outputs show what they teach.

    python tools/execute_lessons.py nbs/05_schedulers.ipynb [more.ipynb ...] [--skip-slow]

Honours nbdev's directives as `nbdev_test` does: cells marked `#| eval: false` are not run (nor are `#| gpu` /
`#| multigpu` cells on a machine without CUDA, nor `#| slow` ones with --skip-slow); their outputs are left as they
were. Kernels run in the notebook's folder and talk over Unix sockets. Run `nbdev_clean` afterwards."""
import argparse, os, re, sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvideo.launch import ipc_kernel_manager  # noqa: E402

SKIP = re.compile(r"^#\|\s*(eval:\s*false|notest)\s*$", re.M)


def flags(source: str) -> set:
    return {m.group(1) for m in re.finditer(r"^#\|\s*([a-z]+)\s*$", source, re.M)}


def execute(path: Path, skip_slow: bool):
    import tempfile, torch
    nb = nbformat.read(path, 4)
    skipped = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code": continue
        f = flags(cell.source)
        if SKIP.search(cell.source) or (skip_slow and "slow" in f) or (f & {"gpu", "multigpu"} and not torch.cuda.is_available()):
            skipped[i] = (cell.source, cell.outputs)
            cell.source = ""
    with tempfile.TemporaryDirectory(prefix="fastvideo-lessons-") as sockets:
        # store_widget_state=False: a widget's state (its video bytes) would bloat the lesson; its screenshot shows it
        NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}, store_widget_state=False,
                       kernel_manager_class=ipc_kernel_manager(sockets)).execute()
    for i, (source, outputs) in skipped.items():
        nb.cells[i].source, nb.cells[i].outputs = source, outputs
    tmp = path.with_name(f".{path.name}.executing")  # the lesson is a source file: replace it whole, never half-written
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    print(f"executed {path} ({len(skipped)} cells skipped)")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--skip-slow", action="store_true")
    a = p.parse_args()
    for nb in a.notebooks: execute(nb, a.skip_slow)
