//! Checkpoints: `checkpoints/step-NNNNNNNN/` holding the trained tensors
//! (`trainable.safetensors`), AdamW's moments (`optimizer.safetensors`) and
//! the counters (`trainer_state.json`). A checkpoint is written into
//! `step-NNNNNNNN.partial/` and renamed when whole, so a run killed while
//! writing leaves only a `.partial` folder that resume ignores and removes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::optim::AdamW;
use crate::error::{LocalError, Result};
use crate::weights::{SafetensorsFiles, write_safetensors};

const PREFIX: &str = "step-";
const PARTIAL: &str = ".partial";
const STATE: &str = "trainer_state.json";

/// The counters a resumed run continues from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TrainerState {
    /// Optimizer steps done.
    pub(crate) step: usize,
    /// AdamW's update count (its bias correction).
    pub(crate) adam_steps: i64,
    /// Training time so far.
    pub(crate) elapsed_seconds: f64,
    /// The best validation loss so far, and its step.
    pub(crate) best_loss: Option<f64>,
    pub(crate) best_step: Option<usize>,
    /// Evaluations since the best one.
    pub(crate) bad_evals: usize,
    /// The settings and data it was written with.
    pub(crate) fingerprint: String,
}

impl TrainerState {
    pub(crate) fn new(fingerprint: String) -> Self {
        Self {
            step: 0,
            adam_steps: 0,
            elapsed_seconds: 0.0,
            best_loss: None,
            best_step: None,
            bad_evals: 0,
            fingerprint,
        }
    }
}

fn root(output: &Path) -> PathBuf {
    output.join("checkpoints")
}

/// Writes a checkpoint of `state.step` and keeps the newest `keep`.
pub(crate) fn save(
    output: &Path,
    optimizer: &AdamW,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    let root = root(output);
    let name = format!("{PREFIX}{:08}", state.step);
    let done = root.join(&name);
    let partial = root.join(format!("{name}{PARTIAL}"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| LocalError::io(&partial, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| LocalError::io(&partial, e))?;
    let params: Vec<(String, Tensor)> =
        optimizer.slots.iter().map(|s| (s.name.clone(), s.param.shallow_clone())).collect();
    write_safetensors(&partial.join("trainable.safetensors"), &params)?;
    let moments: Vec<(String, Tensor)> = optimizer
        .slots
        .iter()
        .flat_map(|s| {
            [
                Some((format!("m.{}", s.name), s.m.shallow_clone())),
                Some((format!("v.{}", s.name), s.v.shallow_clone())),
                s.master.as_ref().map(|t| (format!("master.{}", s.name), t.shallow_clone())),
            ]
        })
        .flatten()
        .collect();
    write_safetensors(&partial.join("optimizer.safetensors"), &moments)?;
    let state = TrainerState { adam_steps: optimizer.steps, ..state.clone() };
    let json = serde_json::to_string_pretty(&state)
        .map_err(|e| LocalError::InvalidArgument(format!("trainer state: {e}")))?;
    let state_path = partial.join(STATE);
    std::fs::write(&state_path, json).map_err(|e| LocalError::io(&state_path, e))?;
    if done.exists() {
        std::fs::remove_dir_all(&done).map_err(|e| LocalError::io(&done, e))?;
    }
    std::fs::rename(&partial, &done).map_err(|e| LocalError::io(&done, e))?;
    let mut all = complete(&root)?;
    while all.len() > keep {
        let (_, old) = all.remove(0);
        std::fs::remove_dir_all(&old).map_err(|e| LocalError::io(&old, e))?;
    }
    Ok(done)
}

/// Complete checkpoints, oldest first.
fn complete(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(LocalError::io(root, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| LocalError::io(root, e))?;
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if entry.path().join(STATE).is_file() {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint.
pub(crate) fn latest(output: &Path) -> Result<Option<PathBuf>> {
    Ok(complete(&root(output))?.pop().map(|(_, p)| p))
}

/// Deletes what an interrupted write left behind.
pub(crate) fn remove_partials(output: &Path) -> Result<()> {
    let root = root(output);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.ends_with(PARTIAL)) {
            let path = entry.path();
            tracing::info!("removing the interrupted checkpoint {}", path.display());
            std::fs::remove_dir_all(&path).map_err(|e| LocalError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Restores the trained tensors and the optimizer from `path`.
pub(crate) fn load(path: &Path, optimizer: &mut AdamW) -> Result<TrainerState> {
    let resume_error = |message: String| LocalError::Resume { path: path.to_path_buf(), message };
    let state_path = path.join(STATE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| LocalError::io(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| resume_error(format!("{STATE}: line {}: {e}", e.line())))?;
    let mut params = SafetensorsFiles::open_file(&path.join("trainable.safetensors"))?;
    let mut moments = SafetensorsFiles::open_file(&path.join("optimizer.safetensors"))?;
    tch::no_grad(|| -> Result<()> {
        for slot in &mut optimizer.slots {
            let size = slot.param.size();
            let p = params.load(&slot.name, &size, slot.param.kind(), slot.param.device())?;
            slot.param.f_copy_(&p)?;
            let m =
                moments.load(&format!("m.{}", slot.name), &size, slot.m.kind(), slot.m.device())?;
            slot.m.f_copy_(&m)?;
            let v =
                moments.load(&format!("v.{}", slot.name), &size, slot.v.kind(), slot.v.device())?;
            slot.v.f_copy_(&v)?;
            if let Some(master) = &mut slot.master {
                // A checkpoint from before master copies: the parameter.
                let name = format!("master.{}", slot.name);
                let t = if moments.contains(&name) {
                    moments.load(&name, &size, Kind::Float, master.device())?
                } else {
                    slot.param.f_to_kind(Kind::Float)?
                };
                master.f_copy_(&t)?;
            }
        }
        Ok(())
    })?;
    optimizer.steps = state.adam_steps;
    Ok(state)
}
