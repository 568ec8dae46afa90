#!/usr/bin/env python3
"""The transformers + PEFT side of `cargo bench -p finetune-local --bench train`.

Creates the benchmark's random Llama model (seeded, save_pretrained) when it
is missing; with --case, LoRA-trains it on the benchmark's token data the way
TRL's SFTTrainer does by default: each batch right-padded to its longest
example (pad = EOS), labels -100 on prompt and padding, loss = the mean over
completion tokens, AdamW. A plain PyTorch loop, with none of Trainer's
overhead. Prints one JSON line: trained tokens/s over the timed steps and
peak RSS (and, with --device cuda, the peak of PyTorch's CUDA allocator:
max_memory_allocated; attention through SDPA, autocast on CUDA).

Pinned with the rest of the HF peers: transformers 5.24.0, peft 0.21.2,
torch 2.11.0 (scripts/setup --hf).
"""

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Qwen2Config

from forward_peer import small_models


def shapes():
    """The random models the benchmark creates: the forward benchmark's
    llama-small, and one with Qwen2.5-0.5B's shape (hidden 896, 24 layers,
    14 heads / 2 KV heads, MLP 4864, vocab 151936, tied embeddings, q/k/v
    biases), which is what fine-tuning on a workstation usually means."""
    return {
        "llama-small": small_models()["llama-small"],
        "qwen2.5-0.5b": Qwen2Config(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            bos_token_id=151643,
            eos_token_id=151643,
        ),
    }


def ensure_model(d: Path, shape: str) -> None:
    """A random model of the shape, seeded, unless one is already there."""
    if (d / "config.json").exists():
        return
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(shapes()[shape], dtype=torch.float32).save_pretrained(d)


def batches(examples, batch_size, pad_id):
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        width = max(len(e["input_ids"]) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        real = 0
        for i, e in enumerate(chunk):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, e["prompt_len"] : n] = ids[i, e["prompt_len"] : n]
            mask[i, :n] = 1
            real += n
        yield ids, labels, mask, real


def length_grouped(examples, batch_size, seed, mega=50):
    """transformers' LengthGroupedSampler: a seeded permutation cut into
    megabatches of `mega` batches, each sorted longest first, so a batch
    holds examples of similar length and pads little."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(examples), generator=g).tolist()
    size = mega * batch_size
    grouped = []
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        chunk.sort(key=lambda i: len(examples[i]["input_ids"]), reverse=True)
        grouped.extend(chunk)
    return [examples[i] for i in grouped]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="passes over the data; the last one is timed, the ones before warm up",
    )
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--shape", choices=sorted(shapes()), default="llama-small")
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="fp32 weights, forward under torch.autocast bf16 (TrainingArguments(bf16=True))",
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument(
        "--group-by-length",
        action="store_true",
        help="order batches as transformers' LengthGroupedSampler does (group_by_length=True)",
    )
    args = ap.parse_args()
    ensure_model(args.model, args.shape)
    if args.data is None:
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    examples = json.loads(args.data.read_text())
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="sdpa"
    ).to(device)
    lora = LoraConfig(
        r=args.r,
        lora_alpha=2 * args.r,
        lora_dropout=0.05,
        target_modules=args.targets.split(","),
        task_type="CAUSAL_LM",
    )
    if args.checkpointing:
        # Recompute each decoder layer in backward; PEFT needs the inputs to
        # require grad for the recomputed layers to reach the adapters.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    pad = model.config.eos_token_id or 0
    tokens, seconds, losses = 0, 0.0, []
    for epoch in range(args.epochs):
        rows = length_grouped(examples, args.batch, epoch) if args.group_by_length else examples
        timed = epoch == args.epochs - 1
        for ids, labels, mask, real in batches(rows, args.batch, pad):
            ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            # Reading the loss waits for the device (the step included).
            losses.append(out.loss.item())
            if timed:
                seconds += time.perf_counter() - start
                tokens += real
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mib = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    print(json.dumps({
        "tokens_per_s": tokens / seconds,
        "timed_tokens": tokens,
        "peak_rss_mib": rss_mib,
        "peak_gpu_mib": gpu_mib,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "steps": len(losses),
    }), flush=True)


if __name__ == "__main__":
    main()
