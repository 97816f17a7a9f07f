#!/usr/bin/env python3
"""PyTorch's time for what `examples/explain_bench.rs` times: one ITM Grad-CAM from
stored vision features (no ViT pass), with transformers and autograd, for comparison on
the same machine and thread count.

    python benches/explain_pytorch.py --model /work/full-vitg --threads 2

Loads only what the pass needs is not possible through `from_pretrained`, so the whole
checkpoint is read (about 5 GB of RAM); the ViT is not run. Prints one JSON line.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))
from make_gradcam_reference import itm_with_attentions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", default="a dog running on the beach at sunset")
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = Blip2ForImageTextRetrieval.from_pretrained(args.model, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    ids = tok([args.text], return_tensors="pt")["input_ids"]
    v = model.config.vision_config
    tokens = 1 + (v.image_size // v.patch_size) ** 2
    vision = (torch.rand(1, tokens, v.hidden_size, generator=torch.Generator().manual_seed(7)) * 2 - 1) * 3 ** 0.5
    layers = [i for i in range(model.config.qformer_config.num_hidden_layers)
              if i % model.config.qformer_config.cross_attention_frequency == 0]

    def once():
        # As LAVIS's compute_gradcam: the weights keep requires_grad, so backward also
        # computes their gradients (qseek's candle pass does the same work).
        model.zero_grad()
        logits, attentions = itm_with_attentions(model, vision, ids)
        a = attentions[layers.index(args.layer)]
        a.retain_grad()
        logits[:, 1].sum().backward()
        return (a[0, :, :, 1:].detach() * a.grad[0, :, :, 1:].clamp(min=0)).mean(dim=(0, 1))

    times = []
    for _ in range(args.reps + 1):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    print(json.dumps({"threads": args.threads, "layer": args.layer, "first_s": times[0],
                      "median_s": sorted(times[1:])[len(times[1:]) // 2], "all_s": times[1:]}))


if __name__ == "__main__":
    main()
