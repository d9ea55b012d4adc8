"""Where classifier-free guidance bends the toy teacher's squares: guidance on only part of the noise range.

The shape bar of the fine-tuning stage (64 Euler steps, guidance 4.5, 90 captions x 2 seeds) is lost to squares the
scorer reads as circles. This samples the bar's exact noise and schedule with guidance `G` applied only where the step's
sigma lies in (LO, HI] (guidance 1, the conditional prediction alone, elsewhere) and prints, per setting, the scorer's
attributes over all videos, the squares it reads as squares and their median fill (>= 0.885 reads as a square). The
setting `4.5@0-1` is the bar's own and reproduces `toy_scores("toy", seeds=(0, 1))` exactly (checked and printed).
A benchmark, not a test; about 2 minutes per setting on 2 threads.

Run: .venv/bin/python bench/teacher_guidance.py [--model_path toy] [--setting G@LO-HI ...] [--seeds 0 1] [--json OUT.json]
"""
import argparse, json, re, time
from pathlib import Path

import numpy as np
import torch

from _memory import ROOT  # noqa: F401 (puts the repository on sys.path)
from fastvideo import toy  # noqa: E402
from fastvideo.sampling import decode, encode, latent_shape, load_pipeline, prepare_latents, to_uint8, toy_scores  # noqa: E402
from fastvideo.schedulers import euler_step, make_schedule  # noqa: E402

SETTINGS = ["4.5@0-1", "4.5@0.5-1", "4.5@0-0.5", "2.5@0-1"]
p = argparse.ArgumentParser()
p.add_argument("--model_path", default="toy")
p.add_argument("--setting", action="append", default=None,
               help="G@LO-HI: guidance G where LO < sigma <= HI, 1 elsewhere (default: %s)" % " ".join(SETTINGS))
p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
p.add_argument("--steps", type=int, default=64)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--json", default=None, help="write the table here")
a = p.parse_args()
torch.set_num_threads(a.threads)


def parse(setting: str) -> tuple:
    m = re.fullmatch(r"([0-9.]+)@([0-9.]+)-([0-9.]+)", setting)
    if not m or not float(m[2]) < float(m[3]):
        raise SystemExit(f"--setting {setting!r}: expected G@LO-HI with LO < HI, e.g. 4.5@0-0.5")
    return float(m[1]), float(m[2]), float(m[3])


@torch.no_grad()
def sample(pipe, captions, seed, g, lo, hi):
    "The bar's sampling (generate's noise, schedule and guidance formula) with guidance g only where lo < sigma <= hi."
    v = toy.TOY_VIDEO
    schedule = make_schedule("euler", a.steps)
    latents = prepare_latents(len(captions), latent_shape(pipe, v.num_frames, v.height, v.width), seed)
    embeds, mask = encode(pipe, captions, guidance=True)
    for i in range(len(schedule)):
        sigma = float(schedule.sigmas[i])
        timestep = schedule.timesteps[i].expand(2 * len(captions))
        velocity = pipe.transformer(hidden_states=torch.cat([latents, latents]), encoder_hidden_states=embeds,
                                    timestep=timestep, encoder_attention_mask=mask, return_dict=False)[0].float()
        uncond, cond = velocity.chunk(2)
        scale = g if lo < sigma <= hi else 1.0
        latents = euler_step(latents, uncond + scale * (cond - uncond), schedule.sigmas[i], schedule.sigmas[i + 1])
    return [to_uint8(f) for f in decode(pipe.vae, latents)]


pipe = load_pipeline(a.model_path)
captions = toy.all_captions()
settings = a.setting or SETTINGS
table = {}
print(f"{a.model_path}: {a.steps} Euler steps, {len(captions)} captions x seeds {a.seeds}")
print(f"{'setting':>12} | {'color':>5} {'shape':>5} {'motion':>6} {'one':>5} {'mean':>5} | squares right | median fill | s")
for setting in settings:
    g, lo, hi = parse(setting)
    started = time.time()
    videos = [v for seed in a.seeds for v in sample(pipe, captions, seed, g, lo, hi)]
    caps = captions * len(a.seeds)
    scores = toy.score_many(videos, caps)
    squares = [toy.score(v, c) for v, c in zip(videos, caps) if " square " in c]
    fills = [s["predicted"]["fill"] for s in squares if s["predicted"]]
    row = {k: round(float(val), 3) for k, val in scores.items() if k != "n"} | {
        "squares_right": int(sum(s["shape"] for s in squares)), "squares": len(squares),
        "square_median_fill": round(float(np.median(fills)), 3) if fills else None, "seconds": round(time.time() - started)}
    table[setting] = row
    print(f"{setting:>12} | {row['color']:5.3f} {row['shape']:5.3f} {row['motion']:6.3f} {row['one_object']:5.3f} "
          f"{row['mean']:5.3f} | {row['squares_right']:>6}/{row['squares']:<6} | {row['square_median_fill']:>11} | {row['seconds']}", flush=True)
    if (g, lo, hi) == (4.5, 0.0, 1.0):  # the bar's own setting: the same numbers as the kit's sampler
        ref = toy_scores(a.model_path, seeds=a.seeds, num_inference_steps=a.steps, guidance_scale=4.5, progress=False)
        same = all(abs(ref[k] - scores[k]) < 1e-9 for k in scores)
        print(f"{'':>12}   toy_scores at guidance 4.5: mean {ref['mean']:.3f}, shape {ref['shape']:.3f} "
              f"({'the same' if same else 'DIFFERENT: this loop is not the bar'})")
        row["equals_toy_scores"] = same
if a.json:
    Path(a.json).write_text(json.dumps({"model_path": a.model_path, "steps": a.steps, "seeds": a.seeds, "table": table}, indent=1) + "\n")
    print("wrote", a.json)
