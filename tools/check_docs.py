"""nbdev's docs pre-processing without Quarto (which cannot be installed here): what `nbdev_docs` runs before
`quarto render`, i.e. nbdev.yml from settings.ini, the module index, the sidebar and every notebook through the doc
processors into _proc/. Fails if a notebook does not process or if the step rewrites a tracked file. The steps are
`make docs`'s own (tools/build_docs.py's `preprocess`), so the check and the site cannot drift apart."""
import os, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_docs import preprocess  # noqa: E402

cfg = preprocess(Path(__file__).resolve().parents[1] / "_proc")
cache = cfg.config_path / "_proc"
nbs = sorted(p.relative_to(cfg.nbs_path) for p in cfg.nbs_path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
missing = [str(p) for p in nbs if not (cache / p).exists()]
if missing: sys.exit(f"docs: these notebooks did not come out of the doc processors: {missing}")
print(f"docs: {len(nbs)} notebooks processed into {cache}")
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)  # as build_docs.py: skip the exit hooks of the IPython shells the doc processors left (seconds of GC)
