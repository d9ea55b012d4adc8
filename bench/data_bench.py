"""Preprocessing speed at toy size, and decord vs PyAV decoding of the same mp4 files.

    .venv/bin/python bench/data_bench.py [--n_videos 16] [--n_images 4] [--repeats 3] [--threads 1] [--batch_size 8]

Prints clips/s of `fastvideo.data.preprocess` (toy VAE + toy T5 on CPU, fresh output folder each pass) one clip at a
time (batch 1) and `--batch_size` at a time, alternating passes on the same data, with their ratio; and the time to decode
every toy mp4 with decord and with PyAV (each with its default threading), plus their ratio, measured in the same run.
"""
import argparse, json, platform, tempfile, time
from pathlib import Path

import decord
import numpy as np
import torch

from fastvideo import data, media, toy


def decode_decord(path):
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))  # library defaults on both sides
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def decode_pyav(path): return media.read_video_av(path)[0]


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_videos", type=int, default=16)
    p.add_argument("--n_images", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="decode timings keep the best of this many passes")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--batch_size", type=int, default=8, help="--preprocess_batch_size compared with 1")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="data_bench_"))
    merge = toy.make_dataset(root / "toy", n_videos=args.n_videos, n_images=args.n_images, seed=0, progress=False)
    videos = sorted((root / "toy" / "media").glob("*.mp4"))
    print(f"config: {args.n_videos} videos (19x64x112, 8 fps) + {args.n_images} images, torch threads {args.threads}, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")

    data.load_encoders("toy")  # warm the import and file caches so the timing below is the stage itself
    best = {}
    for rep in range(args.repeats):  # alternate the two so that a change in machine load hits both alike
        for b in sorted({1, args.batch_size}):  # --batch_size 1: one pass, not two into the same folder
            start = time.perf_counter()
            summary = data.preprocess(merge, root / f"out-b{b}-{rep}", "toy", progress=False, batch_size=b)
            elapsed = time.perf_counter() - start
            best[b] = max(best.get(b, 0.0), summary["encoded"] / elapsed)
    n = summary["encoded"]
    for b, rate in best.items():
        print(f"preprocess batch {b}: {n} items, best of {args.repeats}: {rate:.2f} clips/s (includes loading the toy encoders)")
    speedup = best[args.batch_size] / best[1]
    print(f"batched/one-by-one speed ratio {speedup:.2f} (batch {args.batch_size} vs 1)")

    for path in videos[:1]:  # both decoders must agree on the frames (up to YUV->RGB rounding)
        a, b = decode_decord(path), decode_pyav(path)
        print(f"frames agree: shapes {a.shape} vs {b.shape}, mean |diff| {np.abs(a.astype(int) - b).mean():.2f}")
    t_decord = best_time(lambda: [decode_decord(v) for v in videos], args.repeats)
    t_pyav = best_time(lambda: [decode_pyav(v) for v in videos], args.repeats)
    print(f"decode {len(videos)} mp4s: decord {t_decord * 1e3:.1f} ms, PyAV {t_pyav * 1e3:.1f} ms, "
          f"decord/PyAV time ratio {t_decord / t_pyav:.2f} (<1: decord faster)")
    print(json.dumps({"clips_per_s": best[1], "clips_per_s_batched": best[args.batch_size], "batch_speedup": speedup,
                      "decord_s": t_decord, "pyav_s": t_pyav, "ratio": t_decord / t_pyav}))


if __name__ == "__main__":
    main()
