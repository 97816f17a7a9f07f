#!/usr/bin/env python3
"""Benchmark input (not a test): synthetic JPEG photos, and optionally a LAVIS-style
retrieval annotation file for them, for throughput runs at sizes no fixture has.

    python benches/synthetic_photos.py --out DIR --count 2048 --size 1024x768
    python benches/synthetic_photos.py --out DIR --count 1000 --size 500x375 \\
        --annotations eval.json --captions 5      # Flickr30K-sized: 1 000 x 5 captions

Each photo is a smooth colour gradient with a few random ellipses and rectangles (it
compresses like a photo, unlike noise), saved as JPEG quality 90; photo i is the same on
every run. Captions are drawn from a small grammar ("a red dog next to a wooden
table"); they are plausible sentences, not descriptions of the picture.
"""
import argparse
import json
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "orange", "grey", "pink"]
THINGS = ["dog", "cat", "car", "bicycle", "boat", "horse", "child", "man", "woman", "bird",
          "train", "kite", "cup", "chair", "umbrella", "ball", "truck", "sheep", "cake", "lamp"]
PLACES = ["a wooden table", "the beach", "a busy street", "a green field", "the kitchen",
          "a snowy hill", "the river", "a park bench", "the mountains", "an old house"]
RELATIONS = ["next to", "in front of", "behind", "on", "near", "under", "far from"]


def photo(args) -> None:
    i, out, w, h = args
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (x / w * rng.uniform(0.2, 1) + y / h * rng.uniform(0.2, 1))[..., None] / 2
    img = Image.fromarray((a * (1 - t) + b * t).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        box = [x0, y0, x0 + rng.uniform(20, w / 2), y0 + rng.uniform(20, h / 2)]
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    img.save(out / f"{i:06d}.jpg", quality=90)


def caption(rng: random.Random) -> str:
    return (f"a {rng.choice(COLOURS)} {rng.choice(THINGS)} {rng.choice(RELATIONS)} "
            f"{rng.choice(PLACES)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--size", default="1024x768", help="WxH")
    ap.add_argument("--annotations", type=Path, help="also write a LAVIS annotation file here")
    ap.add_argument("--captions", type=int, default=5, help="captions per photo")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor() as pool:
        list(pool.map(photo, [(i, args.out, w, h) for i in range(args.count)], chunksize=16))
    if args.annotations:
        rng = random.Random(0)
        entries = [{"image": f"{i:06d}.jpg", "caption": [caption(rng) for _ in range(args.captions)]}
                   for i in range(args.count)]
        args.annotations.write_text(json.dumps(entries))
    print(f"wrote {args.count} photos ({w}x{h}) to {args.out}")


if __name__ == "__main__":
    main()
