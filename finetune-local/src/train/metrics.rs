//! What a run reports: one `metrics.jsonl` line per optimizer step and per
//! evaluation, read back on resume, and the loss graph drawn from them.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use finetune_core::{LossCurve, LossPoint};
use serde::{Deserialize, Serialize};

use crate::error::{LocalError, Result};

/// The metrics of one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step, from 1.
    pub step: usize,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// The step's mean loss per trained token.
    pub loss: f64,
    /// The learning rate the step used.
    pub learning_rate: f64,
    /// The gradient's global norm before clipping.
    pub grad_norm: f64,
    /// Tokens that took a loss.
    pub trained_tokens: u64,
    /// Real (non-padding) tokens read.
    pub tokens: u64,
    /// Real (non-padding) tokens per second through forward and backward.
    pub tokens_per_second: f64,
    /// Seconds since training began (across resumes).
    pub elapsed_seconds: f64,
}

/// The metrics of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// The step after which it ran.
    pub step: usize,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Mean loss per completion token of the validation set.
    pub validation_loss: f64,
    /// Fraction of completion tokens predicted exactly (argmax).
    pub validation_token_accuracy: f64,
    /// Completion tokens evaluated.
    pub validation_tokens: u64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetricsLine {
    /// A training step.
    Train(StepRecord),
    /// An evaluation.
    Eval(EvalRecord),
}

impl MetricsLine {
    pub(super) fn step(&self) -> usize {
        match self {
            Self::Train(r) => r.step,
            Self::Eval(r) => r.step,
        }
    }

    /// The loss-curve point this line gives.
    pub fn point(&self) -> LossPoint {
        match self {
            Self::Train(r) => LossPoint {
                step: r.step as u64,
                epoch: Some(r.epoch),
                train_loss: Some(r.loss),
                learning_rate: Some(r.learning_rate),
                ..LossPoint::default()
            },
            Self::Eval(r) => LossPoint {
                step: r.step as u64,
                epoch: Some(r.epoch),
                validation_loss: Some(r.validation_loss),
                validation_token_accuracy: Some(r.validation_token_accuracy),
                ..LossPoint::default()
            },
        }
    }
}

/// Writes `loss.svg` and `loss.png` into `dir`.
pub fn save_loss_graph(curve: &LossCurve, dir: &Path) -> Result<()> {
    let title =
        if curve.has_validation() { "Training and validation loss" } else { "Training loss" };
    let options = finetune_core::PlotOptions::titled(title);
    curve.save_plot(dir.join("loss.svg"), &options)?;
    curve.save_plot(dir.join("loss.png"), &options)?;
    Ok(())
}

/// Reads `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>> {
    let file = File::open(path).map_err(|e| LocalError::io(path, e))?;
    let mut lines = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| LocalError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        // A run killed mid-write can leave a torn last line: stop there.
        match serde_json::from_str::<MetricsLine>(&line) {
            Ok(l) => lines.push(l),
            Err(e) => {
                tracing::warn!("{}: line {}: {e}; ignoring the rest", path.display(), i + 1);
                break;
            }
        }
    }
    Ok(lines)
}

/// Keeps the lines up to `step` (what a resumed run continues from) and
/// rewrites the file atomically; a fresh run starts an empty file.
pub(super) fn rewrite_metrics(path: &Path, step: usize) -> Result<Vec<MetricsLine>> {
    let kept: Vec<MetricsLine> = if step > 0 && path.exists() {
        read_metrics(path)?.into_iter().filter(|l| l.step() <= step).collect()
    } else {
        Vec::new()
    };
    let mut text = String::new();
    for line in &kept {
        let json = serde_json::to_string(line)
            .map_err(|e| LocalError::InvalidArgument(format!("metrics: {e}")))?;
        text.push_str(&json);
        text.push('\n');
    }
    let partial = path.with_extension("jsonl.partial");
    std::fs::write(&partial, text).map_err(|e| LocalError::io(&partial, e))?;
    std::fs::rename(&partial, path).map_err(|e| LocalError::io(path, e))?;
    Ok(kept)
}
