//! Bring your own training code: a folder that custom code wrote — a model
//! in the HF layout, or a PEFT LoRA adapter over a named base — becomes a
//! [`FineTunedModel`] a registry can hold as a version, once it has been
//! loaded to prove it can be.
//!
//! A `metrics.jsonl` in the folder gives the loss curve: one JSON object per
//! line with a `step` and any of `loss` (training), `eval_loss` or
//! `validation_loss`, `epoch` and `learning_rate` — the keys of
//! transformers' `Trainer` log history (write `trainer.state.log_history`
//! one entry a line) and of this crate's trainer.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::Utc;
use finetune_core::{
    Error, FineTunedModel, Location, LossCurve, LossPoint, ModelArtifacts, Result,
};

use crate::chat_model::{Weights, load, weights_in};
use crate::job::Runtime;

/// Checks that `dir` loads with `runtime` (base + adapter, or the model)
/// and describes it as a local fine-tuned model. `base_model` names the
/// base of an adapter whose `adapter_config.json` names none (or one that
/// is not found here); `name` is the model's id.
pub fn import_trained(
    dir: &Path,
    name: &str,
    base_model: Option<&str>,
    runtime: &Runtime,
) -> Result<FineTunedModel> {
    let weights = weights_in(dir, base_model, runtime)?;
    let base = match &weights {
        Weights::Adapter { base, .. } => base.clone(),
        Weights::Model(_) => base_model.map_or_else(|| dir.display().to_string(), str::to_owned),
    };
    // Loading is the check: a folder that does not load is no version.
    drop(load(&weights, runtime)?);
    let metrics = dir.join("metrics.jsonl");
    let loss_curve = if metrics.is_file() { read_curve(&metrics)? } else { LossCurve::new() };
    let mut metadata = BTreeMap::new();
    metadata.insert("origin".to_owned(), "custom training code".to_owned());
    metadata.insert(
        "weights".to_owned(),
        match weights {
            Weights::Adapter { .. } => "lora adapter".to_owned(),
            Weights::Model(_) => "model".to_owned(),
        },
    );
    Ok(FineTunedModel {
        provider: crate::provider::NAME.to_owned(),
        model_id: name.to_owned(),
        base_model: base,
        job_id: None,
        created_at: Utc::now(),
        requires_deployment: false,
        artifacts: ModelArtifacts::LocalDir { path: dir.to_owned() },
        loss_curve,
        metadata,
    })
}

/// Reads a `metrics.jsonl` of step records (see the module docs). A line
/// that is not such a record is an error naming the file and line.
pub fn read_curve(path: &Path) -> Result<LossCurve> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut curve = LossCurve::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || Location::file(path.display().to_string()).with_line(i as u64 + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::invalid_at(at(), e.to_string()))?;
        let number = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let step = v
            .get("step")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| Error::invalid_at(at().with_column("step"), "no step number"))?;
        let point = LossPoint {
            step,
            epoch: number("epoch"),
            train_loss: number("loss"),
            validation_loss: number("eval_loss").or_else(|| number("validation_loss")),
            learning_rate: number("learning_rate"),
            ..LossPoint::default()
        };
        if point.train_loss.is_some() || point.validation_loss.is_some() {
            curve.upsert(point);
        }
    }
    Ok(curve)
}
