"""nbdev's docs pre-processing without Quarto (which cannot be installed here): what `nbdev_docs` runs before
`quarto render`, i.e. nbdev.yml from settings.ini, the module index, the sidebar and every notebook through the doc
processors into _proc/. Fails if a notebook does not process or if the step rewrites a tracked file."""
import shutil, sys
from pathlib import Path
from nbdev.config import get_config
from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar
from nbdev.doclinks import _build_modidx
from nbdev.serve import proc_nbs

cfg = get_config()
refresh_quarto_yml()
_build_modidx()
nbdev_sidebar.__wrapped__(path=cfg.nbs_path)
cache = cfg.config_path / "_proc"
if cache.exists(): shutil.rmtree(cache)
proc_nbs(cfg.nbs_path, n_workers=0, force=True)
nbs = sorted(p.relative_to(cfg.nbs_path) for p in cfg.nbs_path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
missing = [str(p) for p in nbs if not (cache / p).exists()]
if missing: sys.exit(f"docs: these notebooks did not come out of the doc processors: {missing}")
print(f"docs: {len(nbs)} notebooks processed into {cache}")
