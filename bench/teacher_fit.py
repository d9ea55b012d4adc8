"""Is the toy teacher overfit? Its flow-matching loss on clips it trained on against fresh clips of the same world.

The shipped teacher trained on 3,000 clips of data seed 1 (`nbs/runs/teacher.ipynb`). This takes the first N of those
clips (each item has its own random stream, so they are exactly the clips it saw) and N clips of another seed, encodes
both with the toy VAE (posterior means, no sampling), and prints the conditional loss of the teacher at a few noise
levels, the same noise for both sets. Equal losses: more data of the same world would not help; a large gap: it would.
A benchmark, not a test; about 1.5 minutes on 2 threads at N = 300 (encoding included).

Run: .venv/bin/python bench/teacher_fit.py [--work outputs/teacher_fit] [--n 300] [--model_path toy]
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from _memory import ROOT  # noqa: F401 (puts the repository on sys.path)
from fastvideo import data, toy  # noqa: E402
from fastvideo.data import LatentDataset  # noqa: E402
from fastvideo.dit import MochiDiT  # noqa: E402
from fastvideo.train import flow_matching_loss  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--work", default="outputs/teacher_fit", help="the two encoded data sets")
p.add_argument("--n", type=int, default=300, help="clips in each set")
p.add_argument("--model_path", default="toy")
p.add_argument("--train_seed", type=int, default=1, help="the teacher's data seed")
p.add_argument("--fresh_seed", type=int, default=999)
p.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)

work = Path(a.work)
model = MochiDiT.from_pretrained(toy.model_path(a.model_path) if a.model_path in toy.TOY_MODELS else a.model_path,
                                 subfolder="transformer", torch_dtype=torch.float32).eval()
losses = {}
for name, seed in (("trained on", a.train_seed), ("fresh", a.fresh_seed)):
    folder = work / f"seed{seed}-n{a.n}"
    if not (folder / "preprocessed" / "videos2caption.json").exists():
        toy.make_dataset(folder / "raw", n_videos=a.n, n_images=0, seed=seed, overwrite=True, progress=False)
    data.preprocess(folder / "raw" / "merge.txt", folder / "preprocessed", "toy", progress=False)  # skips what is done
    ds = LatentDataset(folder / "preprocessed" / "videos2caption.json", text_dropout=0.0, sample=False)
    items = [ds[i] for i in range(len(ds))]
    latents, embeds, mask = (torch.stack([it[k] for it in items]) for k in ("latents", "prompt_embeds", "prompt_attention_mask"))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))  # the same noise for both sets
    with torch.no_grad():
        losses[name] = [float(np.mean([flow_matching_loss(model, latents[i:i + 50], embeds[i:i + 50], mask[i:i + 50],
                                                          torch.full((len(latents[i:i + 50]),), s), noise[i:i + 50])
                                       for i in range(0, len(latents), 50)])) for s in a.sigmas]

print(f"{a.model_path}: conditional flow-matching loss on {a.n} clips each (posterior means, the same noise)")
print("| sigma | " + " | ".join(f"{s:g}" for s in a.sigmas) + " |\n|---|" + "---|" * len(a.sigmas))
for name, row in losses.items(): print(f"| {name} (seed {a.train_seed if name == 'trained on' else a.fresh_seed}) | " + " | ".join(f"{v:.4f}" for v in row) + " |")
print("| fresh / trained on | " + " | ".join(f"{f / t:.3f}" for f, t in zip(losses["fresh"], losses["trained on"])) + " |")
