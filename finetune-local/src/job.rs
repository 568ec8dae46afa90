//! A whole local fine-tuning job: find the model, tokenize the examples,
//! train, and write the adapter and/or merged model, the metrics and the
//! loss graph into one folder. The local provider and the `finetune_local`
//! example both run this.
//!
//! The output folder:
//!
//! ```text
//! <output>/adapter/          PEFT adapter (LoRA): adapter_model.safetensors, adapter_config.json
//! <output>/merged/           HF model (full fine-tuning, or LoRA with `merge`)
//! <output>/metrics.jsonl     one line per step and per evaluation
//! <output>/loss.svg, .png    the loss graph
//! <output>/checkpoints/      step-NNNNNNNN, the newest kept
//! <output>/summary.json      what ran and how it ended
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::Serialize;
use tch::{Device, Kind};

use crate::error::{LocalError, Result};
use crate::hub::{ModelCache, locate};
use crate::models::{CausalLm, LoadOptions};
use crate::sft::{Example, PromptFormat, TokenizeOptions, TokenizeStats, Truncation, tokenize_all};
use crate::tokenizer::Tokenizer;
use crate::train::{Method, StopReason, TrainConfig, TrainEvent, TrainOutcome, Trainer};

/// Where and how local training runs: the settings a container
/// configuration would carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    /// The device; `None` takes the first GPU when there is one.
    pub device: Option<Device>,
    /// The compute dtype; `None` is fp32 on CPU and bf16 on CUDA.
    pub dtype: Option<Kind>,
    /// libtorch's CPU threads; `None` leaves libtorch's default.
    pub threads: Option<usize>,
    /// Where job folders go.
    pub output_root: PathBuf,
    /// Where models are looked up by id.
    pub cache: ModelCache,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            device: None,
            dtype: None,
            threads: None,
            output_root: PathBuf::from("finetune-output"),
            cache: ModelCache::from_env(),
        }
    }
}

impl Runtime {
    /// Reads `FINETUNE_DEVICE` (`cpu`, `cuda`, `cuda:N`), `FINETUNE_DTYPE`
    /// (`float32`, `bfloat16`, `float16`), `FINETUNE_THREADS` and
    /// `FINETUNE_OUTPUT` over the defaults.
    pub fn from_env() -> Result<Self> {
        let mut r = Self::default();
        if let Ok(v) = std::env::var("FINETUNE_DEVICE") {
            r.device = Some(parse_device(&v)?);
        }
        if let Ok(v) = std::env::var("FINETUNE_DTYPE") {
            r.dtype = Some(parse_dtype(&v)?);
        }
        if let Ok(v) = std::env::var("FINETUNE_THREADS") {
            r.threads = Some(v.parse().map_err(|_| {
                LocalError::InvalidArgument(format!("FINETUNE_THREADS: `{v}` is not a count"))
            })?);
        }
        if let Ok(v) = std::env::var("FINETUNE_OUTPUT") {
            r.output_root = PathBuf::from(v);
        }
        Ok(r)
    }

    /// The device jobs run on.
    pub fn resolved_device(&self) -> Device {
        self.device.unwrap_or_else(|| crate::RuntimeInfo::detect().preferred_device())
    }

    /// Applies the thread setting to libtorch (process-wide).
    pub fn apply_threads(&self) {
        if let Some(n) = self.threads {
            tch::set_num_threads(i32::try_from(n).unwrap_or(i32::MAX));
        }
    }
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| LocalError::InvalidArgument(format!("unknown device `{s}`"))),
    }
}

/// `float32`, `bfloat16` or `float16`.
pub fn parse_dtype(s: &str) -> Result<Kind> {
    match s {
        "float32" | "fp32" => Ok(Kind::Float),
        "bfloat16" | "bf16" => Ok(Kind::BFloat16),
        "float16" | "fp16" => Ok(Kind::Half),
        _ => Err(LocalError::InvalidArgument(format!("unknown dtype `{s}`"))),
    }
}

/// What to write at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outputs {
    /// The PEFT adapter (LoRA only).
    pub adapter: bool,
    /// The merged model in HF layout (always for full fine-tuning).
    pub merged: bool,
}

impl Default for Outputs {
    fn default() -> Self {
        Self { adapter: true, merged: false }
    }
}

/// A local fine-tuning job.
#[derive(Debug, Clone)]
pub struct LocalJob {
    /// A model directory or an HF id in the cache.
    pub model: String,
    /// Training examples.
    pub train: Vec<Example>,
    /// Validation examples (may be empty).
    pub validation: Vec<Example>,
    /// The training settings (`max_length` is also the tokenizing length).
    pub config: TrainConfig,
    /// Chat template or base format; `None` uses the chat template when the
    /// tokenizer has one.
    pub format: Option<PromptFormat>,
    /// Which side to cut from examples longer than `max_length`.
    pub truncation: Truncation,
    /// What to write.
    pub outputs: Outputs,
    /// The job folder.
    pub output_dir: PathBuf,
    /// Continue from the newest checkpoint in the job folder.
    pub resume: bool,
}

/// What a job produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobReport {
    /// The model's directory.
    pub model_dir: PathBuf,
    /// The job folder.
    pub output_dir: PathBuf,
    /// The PEFT adapter, when written.
    pub adapter_dir: Option<PathBuf>,
    /// The merged model, when written.
    pub merged_dir: Option<PathBuf>,
    /// How the examples tokenized.
    pub train_examples: usize,
    /// Training examples dropped because truncation left no completion.
    pub skipped_fully_truncated: usize,
    /// Examples cut to `max_length`.
    pub truncated: usize,
    /// Examples whose prompt was not a token prefix of the conversation.
    pub prefix_mismatches: usize,
    /// Validation examples used.
    pub validation_examples: usize,
    /// Steps done and planned.
    pub steps: usize,
    /// Steps planned.
    pub total_steps: usize,
    /// `completed`, `early_stopped` or `cancelled`.
    pub stop: &'static str,
    /// The step with the lowest validation loss, and that loss.
    pub best: Option<(usize, f64)>,
    /// The last training loss.
    pub final_train_loss: Option<f64>,
    /// Training time in seconds.
    pub train_seconds: f64,
}

/// Loads the model named by `spec` (a directory or an id in `cache`).
pub fn load_model(spec: &str, runtime: &Runtime) -> Result<(PathBuf, CausalLm, Tokenizer)> {
    let dir = locate(spec, &runtime.cache)?;
    let options = LoadOptions { device: runtime.resolved_device(), dtype: runtime.dtype };
    let model = CausalLm::load(&dir, &options)?;
    let tokenizer = Tokenizer::from_dir(&dir)?;
    Ok((dir, model, tokenizer))
}

/// Runs `job`: returns after training ends (completed, early-stopped or
/// cancelled through `cancel`) and the outputs are written. Nothing is
/// written on cancel but the metrics, graph and checkpoints.
pub fn run_job(
    job: &LocalJob,
    runtime: &Runtime,
    cancel: Arc<AtomicBool>,
    on_event: impl FnMut(&TrainEvent),
) -> Result<(JobReport, TrainOutcome)> {
    run_job_on(job, runtime, cancel, on_event, None)
}

/// [`run_job`] as one rank of a data-parallel run when `group` is given
/// (see [`Trainer::data_parallel`]): every rank trains, rank 0 alone writes
/// the job folder's outputs; the others report none.
pub fn run_job_on(
    job: &LocalJob,
    runtime: &Runtime,
    cancel: Arc<AtomicBool>,
    on_event: impl FnMut(&TrainEvent),
    group: Option<&mut dyn crate::train::Collective>,
) -> Result<(JobReport, TrainOutcome)> {
    runtime.apply_threads();
    let main = group.as_ref().is_none_or(|g| g.rank() == 0);
    let (model_dir, mut model, tokenizer) = load_model(&job.model, runtime)?;
    let format = job.format.unwrap_or(if tokenizer.chat_template().is_some() {
        PromptFormat::Chat
    } else {
        PromptFormat::Base
    });
    let options =
        TokenizeOptions { format, max_length: job.config.max_length, truncation: job.truncation };
    let (train, stats) = tokenize_all(&tokenizer, &job.train, &options)?;
    let (validation, _) = tokenize_all(&tokenizer, &job.validation, &options)?;
    log_stats(&stats);
    if train.is_empty() {
        return Err(LocalError::InvalidArgument(format!(
            "no training example has a completion token left after truncation to {} tokens",
            job.config.max_length
        )));
    }
    let started = std::time::Instant::now();
    let mut trainer = Trainer::new(&mut model, job.config.clone())?
        .output_dir(&job.output_dir)
        .resume(job.resume)
        .cancel_flag(cancel)
        .on_event(on_event);
    if let Some(group) = group {
        trainer = trainer.data_parallel(group);
    }
    let outcome = trainer.fit(&train, &validation)?;
    let train_seconds = started.elapsed().as_secs_f64();
    let (mut adapter_dir, mut merged_dir) = (None, None);
    if outcome.stop != StopReason::Cancelled && main {
        let base = model_dir.display().to_string();
        if matches!(job.config.method, Method::Lora(_)) && job.outputs.adapter {
            let dir = job.output_dir.join("adapter");
            model.save_adapter(&dir, &base)?;
            adapter_dir = Some(dir);
        }
        if matches!(job.config.method, Method::Full) || job.outputs.merged {
            if model.adapter_store().is_some() {
                model.merge_lora()?;
            }
            let dir = job.output_dir.join("merged");
            model.save_pretrained(&dir, &model_dir)?;
            merged_dir = Some(dir);
        }
    }
    let report = JobReport {
        model_dir,
        output_dir: job.output_dir.clone(),
        adapter_dir,
        merged_dir,
        train_examples: train.len(),
        skipped_fully_truncated: stats.skipped_fully_truncated,
        truncated: stats.truncated,
        prefix_mismatches: stats.prefix_mismatches,
        validation_examples: validation.len(),
        steps: outcome.steps,
        total_steps: outcome.total_steps,
        stop: match outcome.stop {
            StopReason::Completed => "completed",
            StopReason::EarlyStopped => "early_stopped",
            StopReason::Cancelled => "cancelled",
        },
        best: outcome.best,
        final_train_loss: outcome.curve.last_train_loss(),
        train_seconds,
    };
    if main {
        write_summary(&job.output_dir, &report)?;
    }
    Ok((report, outcome))
}

fn log_stats(stats: &TokenizeStats) {
    if stats.skipped_fully_truncated > 0 {
        tracing::warn!(
            skipped = stats.skipped_fully_truncated,
            "examples skipped: truncation left no completion token"
        );
    }
    if stats.prefix_mismatches > 0 {
        tracing::warn!(
            count = stats.prefix_mismatches,
            "examples whose chat-template prompt is not a token prefix of the conversation"
        );
    }
}

fn write_summary(dir: &Path, report: &JobReport) -> Result<()> {
    let path = dir.join("summary.json");
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| LocalError::InvalidArgument(format!("summary: {e}")))?;
    std::fs::write(&path, text + "\n").map_err(|e| LocalError::io(&path, e))
}
