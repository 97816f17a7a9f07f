#!/usr/bin/env python3
"""Benchmark (not a test): each dtype's distance from f32 on checkpoints with outlier
channels, next to PyTorch's bf16 measured in the same run.

Trained ViTs and LLMs have a few fixed channels of the layer norms' outputs at 10-100x
the rest; random checkpoints do not. This makes full-size ViT-g checkpoints that do
(`tests/fixtures/make_fixtures.py --full DIR --outliers FACTOR,CHANNELS --outlier-seed
S`: CHANNELS random channels of every vision layer norm's weight times FACTOR) and prints,
for each, the min and mean cosine of every query vector to its f32 twin:

* PyTorch: transformers' `Blip2ForImageTextRetrieval` in f32, and the same model under
  `torch.autocast("cpu", dtype=torch.bfloat16)`;
* qseek: `examples/dtype_cosine.rs` for each `--dtypes` (bf16, int8), against qseek's f32.

    cargo build --release --example dtype_cosine
    python benches/outliers.py --stress 0,0 50,4 100,8 --seeds 1 2 3 --photos 4

The images are the first `--photos` committed photos by name (tests/fixtures/photos),
pre-processed as the reference does (PIL bicubic, CLIP normalisation): both sides embed
the same pixels. Checkpoints go to `--dir` (4.7 GB each) and are deleted after their
row unless `--keep`. `0,0` is the checkpoint without outliers (seed irrelevant: made
once). The QSEEK_*_GEMM variables of the environment reach qseek (e.g.
`QSEEK_INT8_GEMM=avx2-vnni-evex` for the 256-bit VNNI kernel).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "tests" / "fixtures" / "photos"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def photos(n: int) -> list[Path]:
    return sorted(p for p in PHOTOS.iterdir() if p.is_file())[:n]


def pixel_values(path: Path, size: int):
    import numpy as np
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((size, size), resample=Image.BICUBIC)
    x = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    x = (x - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return x.transpose(2, 0, 1).astype(np.float32)


def load_q_v_biases(model, model_dir: Path) -> None:
    """The hub's `q_bias` + `v_bias` (no key bias) as `qkv.bias`: transformers 5 leaves
    `qkv.bias` zero when a checkpoint stores the split (its load report says so)."""
    import torch
    from safetensors import safe_open

    files = {}
    index = model_dir / "model.safetensors.index.json"
    names = (json.loads(index.read_text())["weight_map"] if index.exists()
             else None)
    with torch.no_grad():
        for i, layer in enumerate(model.vision_model.encoder.layers):
            prefix = f"vision_model.encoder.layers.{i}.self_attn."
            parts = []
            for part in ("q_bias", "v_bias"):
                name = prefix + part
                fname = names[name] if names else "model.safetensors"
                if fname not in files:
                    files[fname] = safe_open(model_dir / fname, framework="pt")
                parts.append(files[fname].get_tensor(name))
            h = parts[0].shape[0]
            layer.self_attn.qkv.bias.copy_(torch.cat([parts[0], torch.zeros(h), parts[1]]))


def pytorch(model_dir: Path, n_photos: int, threads: int, attn: str) -> dict:
    """Min and mean cosine of PyTorch's bf16 autocast query vectors to its f32 ones."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import Blip2ForImageTextRetrieval

    torch.set_num_threads(threads)
    kw = {} if attn == "default" else {"attn_implementation": attn}
    model = Blip2ForImageTextRetrieval.from_pretrained(model_dir, dtype=torch.float32, **kw).eval()
    load_q_v_biases(model, model_dir)
    size = model.config.vision_config.image_size
    pv = torch.from_numpy(np.stack([pixel_values(p, size) for p in photos(n_photos)]))

    def embeds():
        vision = model.vision_model(pixel_values=pv).last_hidden_state
        mask = torch.ones(vision.shape[:-1], dtype=torch.long)
        q = model.query_tokens.expand(vision.shape[0], -1, -1)
        out = model.qformer(query_embeds=q, encoder_hidden_states=vision,
                            encoder_attention_mask=mask).last_hidden_state
        return F.normalize(model.vision_projection(out).float(), dim=-1)

    with torch.inference_mode():
        f32 = embeds()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = embeds()
    cos = F.cosine_similarity(f32.double().flatten(0, 1), bf16.double().flatten(0, 1), dim=-1)
    return {"min_cosine": cos.min().item(), "mean_cosine": cos.mean().item()}


def qseek(model_dir: Path, n_photos: int, threads: int, dtypes: str) -> dict:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    exe = target / "release" / "examples" / "dtype_cosine"
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([str(exe), "--model", str(model_dir), "--dtype", dtypes,
                          "--photos", str(PHOTOS), "--max-photos", str(n_photos),
                          "--random", "0"], env=env, check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {r["dtype"]: r for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stress", nargs="+", default=["0,0", "50,4", "100,8"],
                    help="FACTOR,CHANNELS pairs (0,0: no outliers)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", default="bf16,int8")
    ap.add_argument("--attn", default="default", help="transformers attention (default, eager, sdpa)")
    ap.add_argument("--dir", type=Path, default=Path("/work/models/stress"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:  # PyTorch in its own process, so that its memory is freed after it.
        model_dir, n, threads, attn = args.worker
        print(json.dumps(pytorch(Path(model_dir), int(n), int(threads), attn)))
        return

    dtypes = args.dtypes.split(",")
    head = "| outliers | seed | PyTorch bf16 min / mean | " + " | ".join(
        f"qseek {d} min / mean" for d in dtypes) + " |"
    rows = [head, "|" + "---|" * (3 + len(dtypes))]
    print(head, flush=True)
    for stress in args.stress:
        factor, channels = stress.split(",")
        seeds = [0] if int(channels) == 0 else args.seeds
        for seed in seeds:
            name = f"o{factor}x{channels}s{seed}"
            model_dir = args.dir / name
            if not (model_dir / "config.json").exists():
                cmd = [sys.executable, str(ROOT / "tests" / "fixtures" / "make_fixtures.py"),
                       "--full", str(model_dir)]
                if int(channels):
                    cmd += ["--outliers", stress, "--outlier-seed", str(seed)]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            pt = json.loads(subprocess.run(
                [sys.executable, __file__, "--worker", str(model_dir), str(args.photos),
                 str(args.threads), args.attn], env=env, check=True, capture_output=True,
                text=True).stdout.strip().splitlines()[-1])
            qs = qseek(model_dir, args.photos, args.threads, args.dtypes)
            cells = [f"{pt['min_cosine']:.6f} / {pt['mean_cosine']:.6f}"] + [
                f"{qs[d]['min_cosine']:.6f} / {qs[d]['mean_cosine']:.6f}" for d in dtypes]
            label = "none" if int(channels) == 0 else f"{channels} × {factor}"
            row = f"| {label} | {seed if int(channels) else '–'} | " + " | ".join(cells) + " |"
            rows.append(row)
            print(row, flush=True)
            if not args.keep:
                shutil.rmtree(model_dir)
    kernels = {k: qs[dtypes[-1]][k] for k in ("bf16_gemm", "int8_gemm", "f32_gemm")}
    print(f"\nqseek kernels: {kernels}; {args.photos} photos, {args.threads} threads")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
