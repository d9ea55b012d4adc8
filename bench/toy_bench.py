"""Throughput of the toy world on this machine: clip generation (render + H.264 write), decord read-back, scoring.
Run: .venv/bin/python bench/toy_bench.py [--n 200]"""
import argparse, json, os, platform, tempfile, time
from pathlib import Path
from fastvideo import toy

p = argparse.ArgumentParser(); p.add_argument("--n", type=int, default=200); args = p.parse_args()
with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    toy.make_dataset(Path(tmp) / "d", n_videos=args.n, n_images=0, seed=0, progress=False)
    t_gen = time.perf_counter() - t0
    items = json.loads((Path(tmp) / "d/data.json").read_text())
    t0 = time.perf_counter()
    clips = [toy.read_media(Path(tmp) / "d/media" / it["path"]) for it in items]
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = toy.score_many(clips, [it["cap"][0] for it in items])
    t_score = time.perf_counter() - t0
print(f"config: {args.n} clips of 19x64x112, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
print(f"generate (render + mp4): {args.n / t_gen:7.1f} clips/s")
print(f"read (decord):           {args.n / t_read:7.1f} clips/s")
print(f"score:                   {args.n / t_score:7.1f} clips/s   (mean accuracy {report['mean']:.3f})")
