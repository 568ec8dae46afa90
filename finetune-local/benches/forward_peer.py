#!/usr/bin/env python3
"""The transformers side of `cargo bench -p finetune-local --bench forward`.

Creates the benchmark's random models (seeded, saved with save_pretrained)
when they are missing, then times transformers' forward pass on the same
inputs, threads and repetitions as the Rust side, and prints one JSON line
per model.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config


def small_models():
    common = dict(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=1024,
    )
    return {
        "llama-small": LlamaConfig(**common, tie_word_embeddings=False),
        "qwen2-small": Qwen2Config(**common, tie_word_embeddings=True),
    }


def ensure_models(out: Path) -> None:
    for name, config in small_models().items():
        d = out / name
        if (d / "config.json").exists():
            continue
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(d)


def bench(model_dir: Path, batch: int, seq: int, warmup: int, runs: int) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return batch * seq / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--fixture", type=Path, action="append", default=[])
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--runs", type=int, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ensure_models(args.models)
    dirs = list(args.fixture) + [args.models / n for n in small_models()]
    for d in dirs:
        tps = bench(d, args.batch, args.seq, args.warmup, args.runs)
        print(json.dumps({"model": str(d), "tokens_per_s": tps}), flush=True)


if __name__ == "__main__":
    main()
