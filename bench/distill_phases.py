"""Where PCM's phases pay: students of the toy teacher distilled with 1, 2 or 4 phases on two solver grids, then scored
at 8 / 4 / 2 / 1 PCM steps over all 90 toy captions x 2 seeds (a benchmark, not a test).

Run: .venv/bin/python bench/distill_phases.py --work outputs/distill_phases [--arm NAME=PHASES:GRID ...] [--json OUT.json]

GRID is `lq` (the linear-quadratic table at the kit's defaults, threshold 0.025 and linear range 0.5) or `shiftS` (the
shifted linear table, `--scheduler_type pcm --shift S`; shift1 is even in sigma). Every arm is the distillation run
notebook's recipe, read from the parameters cell of `nbs/runs/distill.ipynb` (today 600 clips of data seed 11, batch
16, lr 1e-4, 50 warm-up steps, distill_cfg 3.5, the EMA target at 0.95, 750 steps), with only its phases and grid
changed (`--distill_cfg W` and `--max_train_steps N` change every arm's). An arm whose `final/` exists is scored, not trained again; an
interrupted one resumes from its checkpoint. The phase edges of each grid are printed first: on the linear-quadratic
table half the grid lies above sigma 0.975, so extra phases land up there.
"""
import argparse, ast, json, time
from pathlib import Path

import papermill
import torch

from _memory import ROOT  # noqa: F401 (puts the repository on sys.path)
from fastvideo import data, toy  # noqa: E402
from fastvideo.dit import MochiDiT  # noqa: E402
from fastvideo.distill import DistillConfig, distill, distill_grid, phase_edges  # noqa: E402
from fastvideo.sampling import toy_scores  # noqa: E402


ARMS = ["lq, 1 phase=1:lq", "lq, 2 phases=2:lq", "lq, 4 phases=4:lq", "even, 1 phase=1:shift1", "even, 2 phases=2:shift1",
        "even, 4 phases=4:shift1", "shift 3, 4 phases=4:shift3"]
p = argparse.ArgumentParser()
p.add_argument("--work", default="outputs/distill_phases", help="data set and one folder per arm")
p.add_argument("--arm", action="append", default=None, help="NAME=PHASES:GRID, GRID lq or shiftS (default: %s)" % "; ".join(ARMS))
p.add_argument("--steps", type=int, nargs="+", default=[8, 4, 2, 1])
p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
RUN = ROOT / "nbs" / "runs" / "distill.ipynb"  # the recipe: its parameters cell
RECIPE = {k: ast.literal_eval(v["default"]) for k, v in papermill.inspect_notebook(str(RUN)).items()}
p.add_argument("--max_train_steps", type=int, default=RECIPE["max_train_steps"])
p.add_argument("--distill_cfg", type=float, default=RECIPE["distill_cfg"], help="the teacher's guidance in the solver step, every arm")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--json", default=None)
args = p.parse_args()
torch.set_num_threads(args.threads)


def grid_flags(grid: str) -> dict:
    if grid == "lq": return {"scheduler_type": "pcm_linear_quadratic"}
    if grid.startswith("shift"):
        try: return {"scheduler_type": "pcm", "shift": float(grid[5:])}
        except ValueError: pass
    raise SystemExit(f"--arm: grid {grid!r} is not lq or shiftS (e.g. shift1)")


arms = []
for spec in args.arm or ARMS:
    name, _, rest = spec.partition("=")
    phases, _, grid = rest.partition(":")
    if not name or not phases.isdigit() or not grid: raise SystemExit(f"--arm {spec!r}: expected NAME=PHASES:GRID, e.g. 'even, 4 phases=4:shift1'")
    arms.append((name, int(phases), grid, grid_flags(grid)))

for name, phases, grid, flags in arms:
    g = distill_grid(50, **flags)
    print(f"{name}: phase edges at sigma", [round(float(g[e]), 3) for e in phase_edges(50, phases)])

work = Path(args.work)
if not (work / "preprocessed" / "videos2caption.json").exists():
    toy.make_dataset(work / "data", n_videos=RECIPE["n_videos"], n_images=0, seed=RECIPE["data_seed"], overwrite=True, progress=False)
data.preprocess(work / "data" / "merge.txt", work / "preprocessed", "toy", progress=False)
rows = {}
for name, phases, grid, flags in arms:
    out = work / (f"{grid}-p{phases}-{args.max_train_steps}" + ("" if args.distill_cfg == RECIPE["distill_cfg"] else f"-cfg{args.distill_cfg:g}"))
    if not (out / "final").exists():
        r = RECIPE  # the run notebook's DistillConfig call, with this arm's phases and grid
        config = DistillConfig(data_json_path=str(work / "preprocessed" / "videos2caption.json"), output_dir=str(out),
                               train_batch_size=r["train_batch_size"], max_train_steps=args.max_train_steps,
                               learning_rate=r["learning_rate"], lr_warmup_steps=r["lr_warmup_steps"], cfg=0.0, seed=r["seed"],
                               checkpointing_steps=r["checkpointing_steps"], checkpoints_total_limit=1, resume_from_checkpoint="latest",
                               distill_cfg=args.distill_cfg, multi_phased_distill_schedule=f"{args.max_train_steps}-{phases}",
                               use_ema=True, ema_decay=r["ema_decay"], **flags)
        load = lambda: MochiDiT.from_pretrained(toy.model_path(), subfolder="transformer")
        started = time.time()
        distill(config, load(), load(), progress=True, model_path="toy")
        print(f"{name}: distilled in {time.time() - started:.0f} s", flush=True)
    rows[name] = {}
    for n in args.steps:
        s = toy_scores(out / "final", seeds=args.seeds, num_inference_steps=n, progress=False)  # guidance 1: distilled in
        rows[name][n] = {k: round(v, 3) for k, v in s.items() if k != "n"}
    print(f"{name}: " + " / ".join(f"{rows[name][n]['mean']:.3f}" for n in args.steps) + f" at {' / '.join(map(str, args.steps))} steps", flush=True)

print(f"\n| student | " + " | ".join(f"@{n}" for n in args.steps) + " |\n|---|" + "---|" * len(args.steps))
for name, r in rows.items(): print(f"| {name} | " + " | ".join(f"{r[n]['mean']:.3f}" for n in args.steps) + " |")
if args.json: Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
