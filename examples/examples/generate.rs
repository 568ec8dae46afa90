//! Generates text with a local HuggingFace model: a model directory, or an
//! id resolved offline in the HF cache (`HF_HUB_CACHE` / `HF_HOME`).
//!
//! ```text
//! cargo run -p finetune-examples --example generate -- \
//!     --model finetune-local/tests/fixtures/models/llama --prompt "Spell backwards: lantern" \
//!     --temperature 0 --max-new-tokens 12 --json
//! ```

use std::time::Instant;

use finetune_examples::args::{Args, usage_error};
use finetune_local::generate::{FinishReason, GenerationOptions, generate};
use finetune_local::tch::{Device, Kind};
use finetune_local::{CausalLm, ChatMessage, LoadOptions, ModelCache, Tokenizer, locate};

const USAGE: &str = "usage: generate --model <DIR_OR_ID> --prompt TEXT [--system TEXT] [--chat]
                [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]
                [--device cpu|cuda] [--dtype f32|bf16|f16] [--json]

  --model           a model directory, or org/name[@revision] from the local HF cache
  --chat            render the prompt (and --system) with the tokenizer's chat template
  --temperature     0 (the default) is greedy decoding
  --json            print one JSON object: prompt_tokens, generated_tokens, text, …";

fn main() {
    let args = Args::parse(
        USAGE,
        &[
            "model",
            "prompt",
            "system",
            "max-new-tokens",
            "temperature",
            "top-p",
            "seed",
            "device",
            "dtype",
        ],
        &["chat", "json"],
    );
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let model_spec =
        args.value("model").unwrap_or_else(|| usage_error(USAGE, "--model is required"));
    let prompt = args.value("prompt").unwrap_or_else(|| usage_error(USAGE, "--prompt is required"));
    if args.value("system").is_some() && !args.switch("chat") {
        usage_error(USAGE, "--system needs --chat");
    }
    let device = match args.value("device") {
        None => Device::cuda_if_available(),
        Some("cpu") => Device::Cpu,
        Some("cuda") if finetune_local::tch::Cuda::is_available() => Device::Cuda(0),
        Some("cuda") => return Err("--device cuda: libtorch sees no CUDA device".into()),
        Some(other) => usage_error(USAGE, &format!("--device {other}: expected cpu or cuda")),
    };
    let dtype = match args.value("dtype") {
        None => None,
        Some("f32") => Some(Kind::Float),
        Some("bf16") => Some(Kind::BFloat16),
        Some("f16") => Some(Kind::Half),
        Some(other) => usage_error(USAGE, &format!("--dtype {other}: expected f32, bf16 or f16")),
    };

    let dir = locate(model_spec, &ModelCache::from_env())?;
    let started = Instant::now();
    let model = CausalLm::load(&dir, &LoadOptions { device, dtype })?;
    let tokenizer = Tokenizer::from_dir(&dir)?;
    let load_s = started.elapsed().as_secs_f64();

    let prompt_tokens = if args.switch("chat") {
        let mut messages = Vec::new();
        if let Some(system) = args.value("system") {
            messages.push(ChatMessage::system(system));
        }
        messages.push(ChatMessage::user(prompt));
        let text = tokenizer.apply_chat_template(&messages, true)?;
        tokenizer.encode(&text, false)?
    } else {
        tokenizer.encode(prompt, true)?
    };
    let options = GenerationOptions {
        max_new_tokens: args.parsed(USAGE, "max-new-tokens").unwrap_or(64),
        temperature: args.parsed(USAGE, "temperature").unwrap_or(0.0),
        top_p: args.parsed(USAGE, "top-p").unwrap_or(1.0),
        seed: args.parsed(USAGE, "seed").unwrap_or(0),
        eos_token_ids: tokenizer.eos_token_ids().to_vec(),
        pad_token_id: tokenizer.pad_token_id(),
    };
    let started = Instant::now();
    let out = generate(&model, std::slice::from_ref(&prompt_tokens), &options)?;
    let generate_s = started.elapsed().as_secs_f64();
    let generation = &out[0];
    let text = tokenizer.decode(&generation.tokens, true)?;
    let finish = match generation.finish_reason {
        FinishReason::Eos => "eos",
        FinishReason::Length => "length",
    };
    if args.switch("json") {
        let report = serde_json::json!({
            "model": dir,
            "architecture": model.config().architecture.model_type(),
            "device": format!("{:?}", model.device()),
            "dtype": format!("{:?}", model.dtype()),
            "prompt_tokens": prompt_tokens,
            "generated_tokens": generation.tokens,
            "text": text,
            "finish_reason": finish,
            "load_seconds": load_s,
            "generate_seconds": generate_s,
        });
        println!("{report}");
    } else {
        println!("{text}");
        eprintln!(
            "[{} on {:?}/{:?}: {} prompt + {} new tokens in {generate_s:.2} s, stopped by {finish}]",
            model.config().architecture.model_type(),
            model.device(),
            model.dtype(),
            prompt_tokens.len(),
            generation.tokens.len(),
        );
    }
    Ok(())
}
