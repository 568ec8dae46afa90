//! The README's main command. With no arguments and no download, it
//!
//! 1. makes a small Llama-architecture model with a byte-level tokenizer
//!    and random weights (`finetune_local::builtin`), in the HF layout;
//! 2. writes the built-in task — numbers to English words, `"407 ="` →
//!    `" four hundred seven"` — as JSON Lines, a training set and a
//!    held-out validation set, and validates them with `finetune-data`;
//! 3. shows what the model writes for held-out numbers before training;
//! 4. fine-tunes it on the CPU (or the GPU when there is one) with packing,
//!    validation loss, checkpoints and the loss graph;
//! 5. shows what the fine-tuned model writes for the same numbers.
//!
//! Everything lands in `quickstart-output/` (or the folder given as the
//! only argument).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use finetune_core::DatasetSource;
use finetune_data::{ValidationOptions, validate};
use finetune_examples::number_in_words;
use finetune_local::builtin::TinyLlama;
use finetune_local::data::read_examples;
use finetune_local::generate::{GenerationOptions, generate};
use finetune_local::sft::{PromptFormat, Truncation};
use finetune_local::train::{AdamWConfig, Method, Schedule, TrainConfig, TrainEvent};
use finetune_local::{CausalLm, LoadOptions, LocalJob, Outputs, Runtime, RuntimeInfo, Tokenizer};

/// Numbers shown before and after; all are in the validation set.
const SHOWN: [u32; 5] = [58, 213, 416, 640, 999];

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "quickstart-output".into()));
    let runtime = Runtime { output_root: out.clone(), ..Runtime::from_env()? };
    println!("== runtime\n{}", RuntimeInfo::detect());
    let started = Instant::now();

    let model_dir = out.join("model");
    TinyLlama::default().write(&model_dir)?;
    println!("\n== model\na built-in Llama model with random weights in {}", model_dir.display());

    let (train_path, valid_path) = write_dataset(&out)?;
    for path in [&train_path, &valid_path] {
        let source = DatasetSource::new(path.to_str().ok_or("a non-UTF-8 path")?)?;
        let (report, stats) = validate(&source, ValidationOptions::default())?;
        if !report.valid {
            return Err(format!("{}: {report}", path.display()).into());
        }
        println!("{}: {} rows, valid", path.display(), stats.rows);
    }
    let train = read_examples(&DatasetSource::new(train_path.to_str().ok_or("path")?)?)?;
    let validation = read_examples(&DatasetSource::new(valid_path.to_str().ok_or("path")?)?)?;

    let device = runtime.resolved_device();
    let tokenizer = Tokenizer::from_dir(&model_dir)?;
    let base = CausalLm::load(&model_dir, &LoadOptions { device, dtype: runtime.dtype })?;
    println!("\n== before fine-tuning (held-out numbers)");
    show(&base, &tokenizer)?;
    drop(base);

    let job = LocalJob {
        model: model_dir.display().to_string(),
        train,
        validation,
        config: TrainConfig {
            method: Method::Full,
            epochs: 12,
            batch_size: 32,
            micro_batch_size: 4,
            learning_rate: 3e-3,
            optimizer: AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() },
            schedule: Schedule::Cosine,
            warmup_steps: 20,
            packing: true,
            max_length: 256,
            eval_every: Some(50),
            checkpoint_every: Some(100),
            seed: 7,
            ..TrainConfig::default()
        },
        format: Some(PromptFormat::Base),
        truncation: Truncation::KeepEnd,
        outputs: Outputs { adapter: false, merged: true },
        output_dir: out.join("run"),
        resume: false,
    };
    println!("\n== fine-tuning ({} examples, {} held out)", job.train.len(), job.validation.len());
    let (report, outcome) =
        finetune_local::run_job(&job, &runtime, Arc::new(AtomicBool::new(false)), |e| match e {
            TrainEvent::Step(r) if r.step % 25 == 0 || r.step == 1 => println!(
                "step {:>4}  epoch {:>5.2}  loss {:.4}  lr {:.2e}  grad norm {:.3}  {:.0} tok/s",
                r.step, r.epoch, r.loss, r.learning_rate, r.grad_norm, r.tokens_per_second
            ),
            TrainEvent::Eval(r) => println!(
                "           validation loss {:.4}  token accuracy {:.1}%",
                r.validation_loss,
                100.0 * r.validation_token_accuracy
            ),
            _ => {}
        })?;
    let first = outcome.curve.train_series().first().map(|p| p.1).unwrap_or(f64::NAN);
    println!(
        "{} steps in {:.1} s; training loss {first:.3} → {:.3}",
        report.steps,
        report.train_seconds,
        report.final_train_loss.unwrap_or(f64::NAN)
    );

    let merged = report.merged_dir.as_deref().ok_or("no merged model was written")?;
    let tuned = CausalLm::load(merged, &LoadOptions { device, dtype: runtime.dtype })?;
    println!("\n== after fine-tuning (held-out numbers)");
    show(&tuned, &tokenizer)?;

    println!("\n== outputs");
    println!("fine-tuned model (HF layout): {}", merged.display());
    println!("loss graph: {} and loss.png", job.output_dir.join("loss.svg").display());
    println!("metrics: {}", job.output_dir.join("metrics.jsonl").display());
    println!("total time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Writes numbers 0–999 as JSON Lines: one in sixteen, picked by a hash
/// (and the shown ones), held out for validation.
fn write_dataset(out: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out)?;
    let (mut train, mut valid) = (String::new(), String::new());
    for n in 0..1000u32 {
        let row = serde_json::json!({
            "prompt": format!("{n} ="),
            "completion": format!(" {}", number_in_words(n)),
        });
        let held_out =
            u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60 == 0 || SHOWN.contains(&n);
        let target = if held_out { &mut valid } else { &mut train };
        target.push_str(&row.to_string());
        target.push('\n');
    }
    let (t, v) = (out.join("numbers-train.jsonl"), out.join("numbers-validation.jsonl"));
    std::fs::write(&t, train)?;
    std::fs::write(&v, valid)?;
    Ok((t, v))
}

fn show(model: &CausalLm, tokenizer: &Tokenizer) -> Result<(), Box<dyn std::error::Error>> {
    let prompts: Vec<Vec<i64>> = SHOWN
        .iter()
        .map(|n| tokenizer.encode(&format!("{n} ="), true))
        .collect::<Result<_, _>>()?;
    let options = GenerationOptions {
        max_new_tokens: 32,
        eos_token_ids: tokenizer.eos_token_ids().to_vec(),
        pad_token_id: tokenizer.pad_token_id(),
        ..GenerationOptions::default()
    };
    let out = generate(model, &prompts, &options)?;
    for (n, g) in SHOWN.iter().zip(out) {
        let text = tokenizer.decode(&g.tokens, true)?;
        let expected = number_in_words(*n);
        let mark = if text.trim() == expected { "✓" } else { "✗" };
        println!("{n:>4} = {:<40} {mark} (expected: {expected})", format!("{text:?}"));
    }
    Ok(())
}
