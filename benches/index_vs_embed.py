#!/usr/bin/env python3
"""Indexing throughput against raw embedding throughput, in one run (a benchmark, not a test).

`qseek index DIR` must not be slower than `qseek embed image FILES...` on the same photos:
decoding and pre-processing run on a producer thread, in parallel, a batch ahead of the
model, so they should stay off the critical path. Goal: index / embed >= 0.9.

For each repetition, on the same folder of JPEGs:
  * embed: `qseek embed image F1 F2 ... --batch B -q > /dev/null`
  * index: `qseek index DIR --index FRESH_TMP --batch B -q` (a new index every time)
  * load:  `qseek embed text x` (model loading and start-up, subtracted from both)
rate = images / (wall - load); the medians of the repetitions are reported with their ratio.

The photos: `--images N` JPEGs of `--size WxH` (quality 90) cut from scikit-image's
sample photos at different offsets, so every file has distinct bytes and content
(`pip install scikit-image pillow`).

    cargo build --release --bin qseek
    python benches/index_vs_embed.py --qseek target/release/qseek \
        --model tests/fixtures/models/tiny --images 64 --size 1600x1200 --reps 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_photos(out: Path, n: int, size: tuple[int, int]) -> list[Path]:
    from PIL import Image
    import skimage.data

    sources = []
    for name in ["astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "immunohistochemistry"]:
        arr = getattr(skimage.data, name)()
        sources.append(Image.fromarray(arr).convert("RGB"))
    w, h = size
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        # Scale up so that crops of the wanted size exist, then crop at an offset.
        scale = max(w / src.width, h / src.height) * (1.1 + 0.05 * (i // len(sources) % 5))
        big = src.resize((int(src.width * scale) + 1, int(src.height * scale) + 1), Image.BICUBIC)
        dx = (i * 37) % max(1, big.width - w)
        dy = (i * 23) % max(1, big.height - h)
        p = out / f"photo_{i:04d}.jpg"
        big.crop((dx, dy, dx + w, dy + h)).save(p, quality=90)
        paths.append(p)
    return paths


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed ({r.returncode}): {r.stderr.strip()}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qseek", default="target/release/qseek")
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", default="1600x1200")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--photos", help="use this folder of JPEGs instead of generating them")
    args = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    env.pop("QSEEK_INDEX", None)
    q, m, b = args.qseek, ["-m", args.model], ["--batch", str(args.batch), "-q"]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.photos:
            folder = Path(args.photos)
            photos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        else:
            folder = tmp / "photos"
            folder.mkdir()
            w, h = (int(x) for x in args.size.split("x"))
            photos = make_photos(folder, args.images, (w, h))
        n = len(photos)
        loads, embeds, indexes = [], [], []
        for rep in range(args.reps):
            loads.append(timed([q, "embed", "text", "x", *m, "-q"], env))
            embeds.append(timed([q, "embed", "image", *map(str, photos), *m, *b], env))
            indexes.append(timed([q, "index", str(folder), "--index", str(tmp / f"index{rep}"), *m, *b], env))
        load = statistics.median(loads)
        embed_rate = n / max(1e-9, statistics.median(embeds) - load)
        index_rate = n / max(1e-9, statistics.median(indexes) - load)
        print(json.dumps({
            "images": n,
            "threads": args.threads,
            "batch": args.batch,
            "load_s": round(load, 3),
            "embed_wall_s": [round(x, 3) for x in embeds],
            "index_wall_s": [round(x, 3) for x in indexes],
            "embed_images_per_s": round(embed_rate, 3),
            "index_images_per_s": round(index_rate, 3),
            "index_over_embed": round(index_rate / embed_rate, 3),
        }))


if __name__ == "__main__":
    main()
