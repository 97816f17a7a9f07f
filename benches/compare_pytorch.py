#!/usr/bin/env python3
"""Benchmark (not a test): qseek against PyTorch (transformers) on the same machine.

Measures, in one invocation and with the same thread count and batch sizes, image
embeddings/s, text embeddings/s and ITM pairs/s of `Blip2ForImageTextRetrieval` at the
full Salesforce/blip2-itm-vit-g size (random weights), with load time and peak memory,
and prints both sides and the ratio qseek/pytorch.

    python benches/compare_pytorch.py --model /work/models/full --threads 2 \\
        --images 4 --texts 64 --pairs 16 --batch 4 --dtype f32

* The checkpoint (~4.7 GB, random weights) is written by
  `tests/fixtures/make_fixtures.py --full DIR` when DIR has no config.json.
* PyTorch runs in a subprocess (its peak RSS is its own, from getrusage), with
  `torch.set_num_threads(N)`, `torch.inference_mode()` and transformers' default
  attention implementation (sdpa; `--attn eager` to compare).
* qseek runs `examples/throughput.rs` (built first with
  `cargo build --release --example throughput`; CARGO_TARGET_DIR is honoured).
* Both sides get RAYON_NUM_THREADS=OMP_NUM_THREADS=MKL_NUM_THREADS=N.
* `--isa avx2` runs qseek on its AVX2-class kernels only (`QSEEK_F32_GEMM=avx2`,
  `QSEEK_INT8_GEMM=avx2`, `QSEEK_BF16_GEMM=off`), as on a CPU without AVX-512: on an
  AVX-512 CPU, a stand-in for one (same code, not the same hardware).
* `--against qseek-f32` compares with qseek's own f32 (on the same kernels) instead of
  PyTorch: issue 13's "≥ 2× qseek f32" on an AVX2-only CPU is
  `--dtype int8 --isa avx2 --against qseek-f32` (on an AVX2 CPU itself, `--isa native`).
* The QSEEK_*_GEMM variables of the environment reach qseek: on an AVX2 CPU without
  VNNI, `QSEEK_INT8_GEMM=madd` measures int8's own codes instead of the 7-bit weights.

What is timed is the same on both sides: image = ViT + Q-Former query pass +
projection + L2 norm on pre-processed pixels (random values); text = embeddings +
Q-Former text pass + projection on token ids padded to the longest of the batch;
ITM = the Q-Former ITM pass on precomputed vision features (what qseek's `itm_logits`
does). Tokenisation and pixel pre-processing are outside the timings; pre-processing
of the committed test photos is reported separately.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "tests" / "fixtures" / "photos"

# Same list as examples/throughput.rs (lower case, no punctuation: LAVIS's caption
# normalisation leaves them unchanged).
CAPTIONS = [
    "a cat lying on a bed next to a pillow",
    "a cup of coffee on a saucer with a spoon",
    "a rocket standing on the launch pad at night",
    "a man holding a camera on a tripod in a field",
    "stars and galaxies in the deep dark space",
    "a close up of the retina of an eye",
    "a pile of old coins on a wooden table",
    "two dogs playing with a red ball in the park",
    "a woman riding a bicycle down a busy city street",
    "a plate of pasta with tomato sauce and basil",
    "a train passing over a bridge near the mountains",
    "a group of people standing around a kitchen table",
    "a small boat floating on a calm blue lake",
    "a child flying a kite on a sunny beach",
    "a bowl of fresh fruit on a marble counter",
    "an old red car parked in front of a house",
]
MAX_TEXT_LEN = 35


def chunks(total: int, batch: int) -> list[int]:
    return [batch] * (total // batch) + ([total % batch] if total % batch else [])


def time_median(reps: int, f, sync=lambda: None) -> float:
    """Median seconds of `reps` runs of `f`, each followed by `sync()` (the GPU's)."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def pytorch_worker(args) -> dict:
    """Runs in the subprocess: loads the model with transformers and times it."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    # int8 is a qseek mode; PyTorch's side runs its fastest CPU mode, bf16.
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
             "int8": torch.bfloat16}[args.dtype]
    kw = {} if args.attn == "default" else {"attn_implementation": args.attn}

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t = time.perf_counter()
    model = Blip2ForImageTextRetrieval.from_pretrained(args.model, dtype=dtype, **kw).eval().to(dev)
    sync()
    load_s = time.perf_counter() - t
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tok = AutoTokenizer.from_pretrained(args.model)
    cfg = model.config
    vdtype = model.vision_model.embeddings.patch_embedding.weight.dtype
    size = cfg.vision_config.image_size
    nq = cfg.num_query_tokens
    assert cfg.image_token_index is None, "benchmark assumes no image_token_index"

    g = torch.Generator().manual_seed(1)
    image_batches = [torch.rand(n, 3, size, size, generator=g).mul(4).sub(2).to(vdtype).to(dev)
                     for n in chunks(args.images, args.batch)]
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(max(args.texts, args.pairs))]

    def encode(batch):
        enc = tok(batch, padding="longest", truncation=True, max_length=MAX_TEXT_LEN,
                  return_tensors="pt")
        return enc["input_ids"].to(dev), enc["attention_mask"].to(dev)

    text_batches = [encode(texts[i : i + args.batch]) for i in range(0, args.texts, args.batch)]
    mean_tokens = sum(len(tok(x)["input_ids"]) for x in texts) / len(texts)

    # What Blip2ForImageTextRetrieval.forward does, split so that each phase runs alone.
    def vision_features(pv):
        return model.vision_model(pixel_values=pv).last_hidden_state

    def image_embeds(vision):
        mask = torch.ones(vision.shape[:-1], dtype=torch.long, device=dev)
        q = model.query_tokens.expand(vision.shape[0], -1, -1)
        out = model.qformer(query_embeds=q, encoder_hidden_states=vision,
                            encoder_attention_mask=mask).last_hidden_state
        return F.normalize(model.vision_projection(out.to(model.vision_projection.weight.dtype)), dim=-1)

    def text_embeds(ids, mask):
        emb = model.embeddings(input_ids=ids)
        out = model.qformer(query_embeds=emb, query_length=0, attention_mask=mask).last_hidden_state
        return F.normalize(model.text_projection(out[:, 0, :]), dim=-1)

    def itm_logits(vision, ids, mask):
        q = model.query_tokens.expand(vision.shape[0], -1, -1)
        mask = torch.cat([torch.ones(q.shape[:-1], dtype=torch.long, device=dev), mask], dim=1)
        emb = model.embeddings(input_ids=ids, query_embeds=q)
        out = model.qformer(query_embeds=emb, query_length=nq, attention_mask=mask,
                            encoder_hidden_states=vision,
                            encoder_attention_mask=torch.ones(vision.shape[:-1], dtype=torch.long,
                                                              device=dev),
                            ).last_hidden_state
        return model.itm_head(out[:, :nq, :].to(model.itm_head.weight.dtype)).mean(dim=1)

    with torch.inference_mode():
        warm_vision = vision_features(image_batches[0])
        image_embeds(warm_vision)
        text_embeds(*text_batches[0])
        n_warm = warm_vision.shape[0]

        vision_s, qformer_s = [], []

        def run_images():
            v = q = 0.0
            for pv in image_batches:
                t0 = time.perf_counter()
                vis = vision_features(pv)
                sync()
                t1 = time.perf_counter()
                image_embeds(vis)
                sync()
                v += t1 - t0
                q += time.perf_counter() - t1
            vision_s.append(v)
            qformer_s.append(q)

        image_s = time_median(args.reps, run_images, sync)

        def run_texts():
            for ids, mask in text_batches:
                text_embeds(ids, mask)

        text_s = time_median(args.reps, run_texts, sync)

        pair_batches = []
        for i, n in enumerate(chunks(args.pairs, args.batch)):
            idx = torch.tensor([(i * args.batch + j) % n_warm for j in range(n)], device=dev)
            ids, mask = encode(texts[i * args.batch : i * args.batch + n])
            pair_batches.append((warm_vision.index_select(0, idx), ids, mask))

        def run_itm():
            for vision, ids, mask in pair_batches:
                itm_logits(vision, ids, mask)

        itm_s = time_median(args.reps, run_itm, sync) if args.pairs else float("nan")

        # One image with many texts (eval, image -> texts): transformers expands the
        # image over the batch and projects its keys and values for every pair.
        one = warm_vision[:1]
        shared_batches = [(one.expand(ids.shape[0], -1, -1), ids, mask)
                          for _, ids, mask in pair_batches]

        def run_itm_shared():
            for vision, ids, mask in shared_batches:
                itm_logits(vision, ids, mask)

        itm_shared_s = (time_median(args.reps, run_itm_shared, sync)
                        if args.pairs else float("nan"))

    preprocess_ms = None
    if args.photos and Path(args.photos).is_dir():
        from PIL import Image
        from transformers import BlipImageProcessor

        proc = BlipImageProcessor.from_pretrained(args.model)
        paths = sorted(p for p in Path(args.photos).iterdir() if p.is_file())

        def run_pre():
            for p in paths:
                proc(images=Image.open(p).convert("RGB"), return_tensors="pt")

        preprocess_ms = time_median(args.reps, run_pre) * 1e3 / len(paths)

    def rate(n, s):
        return n / s if s > 0 else float("nan")

    return {
        "load_s": load_s,
        "images_per_s": rate(args.images, image_s),
        "texts_per_s": rate(args.texts, text_s),
        "itm_pairs_per_s": rate(args.pairs, itm_s),
        "itm_shared_pairs_per_s": rate(args.pairs, itm_shared_s),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "weights_bytes": sum(p.stat().st_size for p in Path(args.model).glob("*.safetensors")),
        "rss_after_load_bytes": rss_after_load,
        "vision_s_per_image": statistics.median(vision_s) / args.images,
        "qformer_s_per_image": statistics.median(qformer_s) / args.images,
        "preprocess_ms_per_image": preprocess_ms,
        "mean_text_tokens": mean_tokens,
        "threads": torch.get_num_threads(),
        "attn_implementation": model.config._attn_implementation,
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "torch": torch.__version__,
    }


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    return env


def common_args(args) -> list[str]:
    return ["--model", str(args.model), "--images", str(args.images), "--texts", str(args.texts),
            "--pairs", str(args.pairs), "--batch", str(args.batch), "--dtype", args.dtype,
            "--reps", str(args.reps), "--device", args.device] + (
                ["--photos", str(args.photos)] if args.photos else [])


def last_json(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in output:\n{stdout}")


def run_pytorch(args) -> dict:
    cmd = [sys.executable, __file__, "--pytorch-worker", "--threads", str(args.threads),
           "--attn", args.attn] + common_args(args)
    print("pytorch:", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, env=thread_env(args.threads), stdout=subprocess.PIPE, check=True, text=True)
    return last_json(out.stdout)


ISA_ENV = {
    "native": {},
    "avx2": {"QSEEK_F32_GEMM": "avx2", "QSEEK_INT8_GEMM": "avx2", "QSEEK_BF16_GEMM": "off"},
}


def run_qseek(args) -> dict:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    exe = args.exe or target / "release" / "examples" / "throughput"
    if not args.exe and (not args.no_build or not exe.exists()):
        subprocess.run(["cargo", "build", "--release", "--example", "throughput"], cwd=ROOT, check=True)
    cmd = [str(exe)] + common_args(args)
    print("qseek:", " ".join(cmd), file=sys.stderr, flush=True)
    env = thread_env(args.threads) | ISA_ENV[args.isa]
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True, text=True)
    return last_json(out.stdout)


def ensure_checkpoint(model: Path) -> None:
    if (model / "config.json").exists():
        return
    print(f"writing the full checkpoint (random weights, ~4.7 GB) to {model} ...", file=sys.stderr, flush=True)
    model.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(ROOT / "tests" / "fixtures" / "make_fixtures.py"), "--full", str(model)],
                   check=True)


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float) and v != v:
        return "nan"
    return f"{v:.3g}{unit}" if isinstance(v, float) else f"{v}{unit}"


def table(pt: dict, qs: dict, base: str = "pytorch") -> str:
    gib = 1024**3
    rows = [
        ("images/s", "images_per_s", 1),
        ("texts/s", "texts_per_s", 1),
        ("ITM pairs/s", "itm_pairs_per_s", 1),
        ("ITM 1 image x texts/s", "itm_shared_pairs_per_s", 1),
        ("load s", "load_s", 1),
        ("vision s/image", "vision_s_per_image", 1),
        ("Q-Former s/image", "qformer_s_per_image", 1),
        ("preprocess ms/image", "preprocess_ms_per_image", 1),
        ("peak RSS GiB", "peak_rss_bytes", gib),
        ("RSS after load GiB", "rss_after_load_bytes", gib),
    ]
    lines = [f"{'metric':<22}{base:>12}{'qseek':>12}{'qseek/' + base:>16}"]
    for name, key, scale in rows:
        a, b = pt.get(key), qs.get(key)
        a = a / scale if isinstance(a, (int, float)) else None
        b = b / scale if isinstance(b, (int, float)) else None
        ratio = b / a if a and b is not None else None
        lines.append(f"{name:<22}{fmt(a):>12}{fmt(b):>12}{fmt(ratio):>16}")
    w = qs.get("weights_bytes") or pt.get("weights_bytes")
    if w:
        per_w = [fmt(d["peak_rss_bytes"] / w) if "peak_rss_bytes" in d else "-" for d in (pt, qs)]
        lines.append(f"{'peak RSS / weights':<22}{per_w[0]:>12}{per_w[1]:>12}")
        lines.append(f"weights (safetensors, f32): {w / gib:.2f} GiB")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "full",
                    help="checkpoint directory, written if missing (default: models/full, git-ignored)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16", "int8"], default="f32",
                    help="both sides' precision; int8 (qseek's) runs PyTorch in bf16")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per phase (median)")
    ap.add_argument("--attn", default="default", choices=["default", "sdpa", "eager"],
                    help="transformers attention implementation (default: what from_pretrained picks)")
    ap.add_argument("--photos", type=Path, default=PHOTOS if PHOTOS.is_dir() else None,
                    help="photos whose pre-processing is timed separately")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build if the example exists")
    ap.add_argument("--exe", type=Path, help="a prebuilt throughput example (e.g. a cuda build carried "
                    "to a machine without Rust); nothing is built")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (both sides; qseek needs a "
                    "cuda build); every timed run ends with a GPU synchronisation")
    ap.add_argument("--only", choices=["pytorch", "qseek"], help="run one side only")
    ap.add_argument("--json", action="store_true", help="also print both sides' raw JSON")
    ap.add_argument("--isa", choices=list(ISA_ENV), default="native",
                    help="qseek's kernels: the CPU's best, or its AVX2-class ones only")
    ap.add_argument("--against", choices=["pytorch", "qseek-f32"], default="pytorch",
                    help="the baseline: PyTorch in --dtype (bf16 for int8), or qseek f32 on the same kernels")
    ap.add_argument("--pytorch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.model = args.model.resolve()

    if args.pytorch_worker:
        print(json.dumps(pytorch_worker(args)))
        return

    ensure_checkpoint(args.model)
    print(f"model {args.model}, {args.device}, {args.threads} threads, batch {args.batch}, dtype {args.dtype}, "
          f"{args.images} images, {args.texts} texts, {args.pairs} pairs, median of {args.reps}, "
          f"qseek kernels {args.isa}, against {args.against}",
          flush=True)
    if args.against == "qseek-f32":
        base = "qseek-f32"
        pt = run_qseek(argparse.Namespace(**{**vars(args), "dtype": "f32"})) if args.only != "qseek" else {}
    else:
        base = "pytorch"
        pt = run_pytorch(args) if args.only != "qseek" else {}
    qs = run_qseek(args) if args.only != "pytorch" else {}
    if args.json:
        print(base, json.dumps(pt))
        print("qseek  ", json.dumps(qs))
    print(table(pt, qs, base))


if __name__ == "__main__":
    main()
