"""How good few-step sampling is: the teacher at 64 / 16 / 8 / 4 / 2 / 1 Euler steps (guidance 4.5) against
distilled students at 8 / 4 / 2 / 1 PCM steps, over all 90 toy captions x 2 seeds (a benchmark, not a test).

Run: .venv/bin/python bench/distill_quality.py --student NAME=FOLDER[@GUIDANCE] [...] [--seeds 0 1] [--threads 2]
     [--json OUT.json] [--plot OUT.png]

Per setting: the toy scorer's mean and per-attribute accuracy; the paired latent error against the teacher's 64-step
latents from the same noise (RMS difference over the RMS of the reference); motion energy (mean absolute difference of
consecutive frames), colour saturation and brightness, each as a ratio to the teacher at 64 steps (consistency
distillation's reported failures: blur, over-saturation, too-fast motion); diversity (mean absolute pixel difference
between the two seeds' videos of a caption, as a ratio to the teacher's); DiT passes per sample; the denoising loop's
and the whole call's (with decoding) seconds per sample, all settings timed in this one run.
"""
import argparse, json, time

import numpy as np
import torch

from _memory import ROOT  # noqa: F401 (puts the repository on sys.path)
from fastvideo import toy  # noqa: E402
from fastvideo.sampling import decode, generate, load_pipeline, to_uint8  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--student", action="append", default=[], help="NAME=FOLDER or NAME=FOLDER@GUIDANCE (default guidance 1)")
p.add_argument("--student_steps", type=int, nargs="+", default=[8, 4, 2, 1])
p.add_argument("--teacher_steps", type=int, nargs="+", default=[64, 16, 8, 4, 2, 1])
p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
p.add_argument("--threads", type=int, default=2)
p.add_argument("--json", default=None)
p.add_argument("--plot", default=None)
p.add_argument("--replot", default=None, help="only draw --plot from a --json this harness wrote earlier")
args = p.parse_args()
torch.set_num_threads(args.threads)
captions = toy.all_captions()


def plot(rows, path):
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    groups = {}
    for name, row in rows.items(): groups.setdefault(name.split(" @ ")[0], []).append((row["dit_passes"], row["mean"]))
    for g, pts in groups.items():
        pts.sort(); ax.plot(*zip(*pts), marker="o", label=g)
    ax.set_xscale("log", base=2); ax.set_xlabel("DiT passes per sample"); ax.set_ylabel("toy scorer mean")
    ax.set_ylim(0, 1.02); ax.grid(alpha=0.3); ax.legend(fontsize=7)
    fig.tight_layout(); fig.savefig(path, dpi=100)


if args.replot:  # redraw a stored table, nothing sampled
    plot(json.loads(open(args.replot).read()), args.plot or args.replot.replace(".json", ".png")); raise SystemExit


def saturation(v):  # HSV saturation of uint8 frames, per pixel
    f = v.astype(np.float32)
    hi, lo = f.max(-1), f.min(-1)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1), 0)


def run(model_path, steps, scheduler_type, guidance):
    pipe = load_pipeline(model_path)
    latents, videos, loop, whole = [], [], 0.0, 0.0
    for seed in args.seeds:
        t = time.perf_counter()
        lat = generate(model_path, captions, seed=seed, num_inference_steps=steps, scheduler_type=scheduler_type,
                       guidance_scale=guidance, output_type="latent", pipeline=pipe, progress=False)
        t1 = time.perf_counter()
        frames = decode(pipe.vae, lat)
        whole += time.perf_counter() - t; loop += t1 - t
        latents.append(lat.float()); videos.append([to_uint8(f) for f in frames])
    n = len(captions) * len(args.seeds)
    scores = toy.score_many([v for vs in videos for v in vs], captions * len(args.seeds))
    return dict(scores=scores, latents=torch.stack(latents), videos=videos, loop_s=loop / n, whole_s=whole / n,
                passes=steps * (2 if guidance > 1 else 1))


settings = [(f"teacher @ {s}", "toy", s, "euler", 4.5) for s in args.teacher_steps]
for spec in args.student:
    name, rest = spec.split("=", 1)
    folder, _, g = rest.partition("@")
    settings += [(f"{name} @ {s}", folder, s, "pcm_linear_quadratic", float(g or 1.0)) for s in args.student_steps]
results = {}
for name, path, steps, kind, g in settings:
    results[name] = run(path, steps, kind, g)
    r = results[name]
    print(f"{name} (guidance {g}): mean {r['scores']['mean']:.3f}, {r['loop_s']:.3f} s/sample", flush=True)

ref = results[f"teacher @ {max(args.teacher_steps)}"]
def stats(r):
    vids = [v for vs in r["videos"] for v in vs]
    motion = np.mean([np.abs(np.diff(v.astype(np.float32), axis=0)).mean() for v in vids if len(v) > 1])
    sat, bright = np.mean([saturation(v).mean() for v in vids]), np.mean([v.mean() for v in vids])
    div = np.mean([np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() for a, b in zip(*r["videos"][:2])]) \
        if len(r["videos"]) > 1 else float("nan")
    err = ((r["latents"] - ref["latents"]).square().mean() / ref["latents"].square().mean()).sqrt().item()
    return dict(motion=motion, saturation=sat, brightness=bright, diversity=div, latent_error=err)
base = stats(ref)
rows = {}
for name, r in results.items():
    s = stats(r)
    rows[name] = {**{k: round(float(v), 4) for k, v in r["scores"].items() if k != "n"},  # floats: numpy's are not json's
                  "latent_error": round(float(s["latent_error"]), 4),
                  **{f"{k}_ratio": round(float(s[k] / base[k]), 3) for k in ("motion", "saturation", "brightness", "diversity")},
                  "dit_passes": r["passes"], "loop_s_per_sample": round(r["loop_s"], 4), "whole_s_per_sample": round(r["whole_s"], 4)}
print(f"\n{len(captions)} captions x seeds {args.seeds}; ratios are to teacher @ {max(args.teacher_steps)}; latent error: "
      "RMS of the difference to its latents from the same noise over their RMS")
cols = ["mean", "color", "shape", "motion", "one_object", "latent_error", "motion_ratio", "saturation_ratio",
        "brightness_ratio", "diversity_ratio", "dit_passes", "loop_s_per_sample", "whole_s_per_sample"]
print("| setting | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
for name, row in rows.items(): print(f"| {name} | " + " | ".join(str(row[c]) for c in cols) + " |")
t64 = rows[f"teacher @ {max(args.teacher_steps)}"]
for name, row in rows.items():
    if name.endswith("@ 8") and not name.startswith("teacher"):
        print(f"{name}: {row['mean'] / t64['mean']:.3f} x teacher @ 64's mean; "
              f"{100 * (row['mean'] - rows['teacher @ 8']['mean']):+.1f} points over teacher @ 8; denoising loop "
              f"{t64['loop_s_per_sample'] / row['loop_s_per_sample']:.1f}x faster ({t64['dit_passes']} vs {row['dit_passes']} DiT passes)")
if args.json: open(args.json, "w").write(json.dumps(rows, indent=1) + "\n")
if args.plot: plot(rows, args.plot)
