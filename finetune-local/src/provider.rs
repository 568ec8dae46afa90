//! The local HuggingFace provider: [`FineTuneProvider`] over [`run_job`],
//! each job training on its own thread, its state and loss curve shared
//! with the caller, cancel honoured before the next step.
//!
//! A spec's `base_model` is a model directory or an HF id in the runtime's
//! model cache; the learning rate is absolute. Settings beyond the common
//! hyperparameters go into [`JobSpec::extras`]:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `method` | `lora` or `full` | `lora` |
//! | `lora_r`, `lora_alpha`, `lora_dropout` | LoRA's rank, alpha, dropout | 8, 16, 0.05 |
//! | `target_modules` | list of module names, or `all-linear` | `q_proj`, `v_proj` (`c_attn` for GPT-2) |
//! | `use_rslora` | rsLoRA scaling | false |
//! | `max_length` | tokens per example (and per packed row) | 1024 |
//! | `packing` | pack examples into rows | false |
//! | `micro_batch_size` | examples (or rows) per forward pass | the batch size |
//! | `schedule` | `constant`, `linear`, `cosine` | `linear` |
//! | `warmup_steps`, `weight_decay`, `max_grad_norm` | | 0, 0, 1 |
//! | `max_steps`, `eval_every`, `early_stopping_patience` | | none |
//! | `checkpoint_every`, `keep_checkpoints` | | none, 2 |
//! | `merge` | also write the merged model | false |

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use finetune_core::{
    Capabilities, Error, FineTuneProvider, FineTunedModel, Job, JobId, JobSpec, JobState,
    LearningRate, LearningRateKind, ListJobs, Location, LossCurve, ModelArtifacts, Page, Progress,
};
use finetune_data::{LocalDataset, ObjectStores};

use crate::job::{LocalJob, Outputs, Runtime, run_job};
use crate::lora::LoraConfig;
use crate::sft::Truncation;
use crate::train::{Method, Schedule, TrainConfig, TrainEvent};

/// The provider's name in jobs and models.
pub const NAME: &str = "local_hf";

struct Entry {
    job: Job,
    state: Arc<Mutex<JobState>>,
    curve: Arc<Mutex<LossCurve>>,
    cancel: Arc<AtomicBool>,
}

/// Fine-tunes HF models on this machine.
pub struct LocalProvider {
    runtime: Runtime,
    stores: ObjectStores,
    jobs: Mutex<Vec<Entry>>,
    next: AtomicU64,
    datasets_read: Arc<AtomicU64>,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider").field("runtime", &self.runtime).finish_non_exhaustive()
    }
}

impl LocalProvider {
    /// A provider running jobs with `runtime`.
    pub fn new(runtime: Runtime) -> Self {
        Self {
            runtime,
            stores: ObjectStores::new(),
            jobs: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
            datasets_read: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Object stores for datasets given as URLs (`s3://`, `az://`, …).
    pub fn with_object_stores(mut self, stores: ObjectStores) -> Self {
        self.stores = stores;
        self
    }

    /// Datasets fetched or opened so far (the local counterpart of uploads).
    pub fn datasets_read(&self) -> u64 {
        self.datasets_read.load(Ordering::Relaxed)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn snapshot(entry: &Entry) -> Job {
        let mut job = entry.job.clone();
        job.state = lock(&entry.state).clone();
        job
    }

    fn not_found(id: &JobId) -> Error {
        Error::NotFound { what: format!("local job {id}") }
    }

    /// Everything `validate` checks, returning the parsed job settings.
    fn prepare(&self, spec: &JobSpec) -> finetune_core::Result<Settings> {
        spec.validate_common()?;
        self.capabilities().check(spec)?;
        let model_dir = crate::locate(&spec.base_model, &self.runtime.cache)
            .map_err(|e| Error::invalid_at(Location::column("base_model"), e.to_string()))?;
        let model_config = crate::ModelConfig::from_dir(&model_dir)
            .map_err(|e| Error::invalid_at(Location::column("base_model"), e.to_string()))?;
        for (field, source) in
            [("training", Some(&spec.training)), ("validation", spec.validation.as_ref())]
        {
            let Some(source) = source else { continue };
            source
                .resolved_format()
                .map_err(|e| Error::invalid_at(Location::column(field), e.to_string()))?;
            if let Ok(local) = LocalDataset::local(source) {
                // A local file must exist now; a URL is fetched at submit.
                let name = local.name().to_owned();
                if let finetune_core::DatasetLocation::Path(p) = &source.location
                    && !p.is_file()
                {
                    return Err(Error::invalid_at(
                        Location::file(name).with_column(field),
                        "no such file",
                    ));
                }
            }
        }
        let mut settings = Settings::from_spec(spec)?;
        // GPT-2 fuses q, k and v into one Conv1D.
        if let Method::Lora(lora) = &mut settings.config.method
            && !spec.extras.contains_key("target_modules")
            && model_config.architecture == crate::Architecture::Gpt2
        {
            lora.target_modules = vec!["c_attn".into()];
        }
        Ok(settings)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A spec's training settings.
struct Settings {
    config: TrainConfig,
    outputs: Outputs,
}

impl Settings {
    fn from_spec(spec: &JobSpec) -> finetune_core::Result<Self> {
        let h = &spec.hyperparameters;
        let extras = &spec.extras;
        let at = |key: &str| Location::column(format!("extras.{key}"));
        let bad = |key: &str, what: &str| Error::invalid_at(at(key), what.to_owned());
        let uint = |key: &str| -> finetune_core::Result<Option<usize>> {
            extras
                .get(key)
                .map(|v| {
                    v.as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| bad(key, "must be a non-negative integer"))
                })
                .transpose()
        };
        let float = |key: &str| -> finetune_core::Result<Option<f64>> {
            extras
                .get(key)
                .map(|v| v.as_f64().ok_or_else(|| bad(key, "must be a number")))
                .transpose()
        };
        let boolean = |key: &str| -> finetune_core::Result<Option<bool>> {
            extras
                .get(key)
                .map(|v| v.as_bool().ok_or_else(|| bad(key, "must be true or false")))
                .transpose()
        };
        const KNOWN: &[&str] = &[
            "method",
            "lora_r",
            "lora_alpha",
            "lora_dropout",
            "target_modules",
            "use_rslora",
            "max_length",
            "packing",
            "micro_batch_size",
            "schedule",
            "warmup_steps",
            "weight_decay",
            "max_grad_norm",
            "max_steps",
            "eval_every",
            "early_stopping_patience",
            "checkpoint_every",
            "keep_checkpoints",
            "merge",
        ];
        if let Some(key) = extras.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(bad(key, &format!("unknown setting; known: {}", KNOWN.join(", "))));
        }
        let full = match extras.get("method").map(|v| v.as_str()) {
            None | Some(Some("lora")) => false,
            Some(Some("full")) => true,
            _ => return Err(bad("method", "must be `lora` or `full`")),
        };
        let method = if full {
            Method::Full
        } else {
            let mut lora = LoraConfig::default();
            if let Some(r) = uint("lora_r")? {
                lora.r = i64::try_from(r).map_err(|_| bad("lora_r", "is too large"))?;
            }
            lora.alpha = float("lora_alpha")?.unwrap_or(lora.alpha);
            lora.dropout = float("lora_dropout")?.unwrap_or(lora.dropout);
            lora.use_rslora = boolean("use_rslora")?.unwrap_or(false);
            match extras.get("target_modules") {
                None => {}
                Some(serde_json::Value::String(s)) => lora.target_modules = vec![s.clone()],
                Some(serde_json::Value::Array(a)) => {
                    lora.target_modules = a
                        .iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| bad("target_modules", "must be a list of names"))?;
                }
                Some(_) => return Err(bad("target_modules", "must be a list of names")),
            }
            lora.validate().map_err(|e| Error::invalid_at(at("lora"), e.to_string()))?;
            Method::Lora(lora)
        };
        let batch_size = h.batch_size.value().unwrap_or(8) as usize;
        let learning_rate = match h.learning_rate.value() {
            Some(LearningRate::Absolute(v)) => v,
            Some(LearningRate::Multiplier(_)) => {
                return Err(Error::invalid_at(
                    Location::column("hyperparameters.learning_rate"),
                    "the local trainer takes an absolute learning rate",
                ));
            }
            None if full => 2e-5,
            None => 2e-4,
        };
        let mut config = TrainConfig {
            method,
            epochs: h.epochs.value().unwrap_or(3) as usize,
            batch_size,
            micro_batch_size: uint("micro_batch_size")?.unwrap_or(batch_size),
            learning_rate,
            warmup_steps: uint("warmup_steps")?.unwrap_or(0),
            max_steps: uint("max_steps")?,
            packing: boolean("packing")?.unwrap_or(false),
            max_length: uint("max_length")?.unwrap_or(1024),
            seed: spec.seed.unwrap_or(42),
            eval_every: uint("eval_every")?,
            early_stopping_patience: uint("early_stopping_patience")?,
            checkpoint_every: uint("checkpoint_every")?,
            keep_checkpoints: uint("keep_checkpoints")?.unwrap_or(2),
            ..TrainConfig::default()
        };
        if let Some(s) = extras.get("schedule") {
            config.schedule = s
                .as_str()
                .ok_or_else(|| bad("schedule", "must be a string"))?
                .parse::<Schedule>()
                .map_err(|e| bad("schedule", &e.to_string()))?;
        }
        config.optimizer.weight_decay = float("weight_decay")?.unwrap_or(0.0);
        if let Some(n) = float("max_grad_norm")? {
            config.max_grad_norm = Some(n);
        }
        config.check().map_err(|e| Error::invalid_at(at("settings"), e.to_string()))?;
        let outputs =
            Outputs { adapter: !full, merged: full || boolean("merge")?.unwrap_or(false) };
        Ok(Self { config, outputs })
    }
}

#[async_trait]
impl FineTuneProvider for LocalProvider {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full(LearningRateKind::Absolute)
    }

    async fn validate(&self, spec: &JobSpec) -> finetune_core::Result<()> {
        self.prepare(spec).map(|_| ())
    }

    async fn submit(&self, spec: &JobSpec) -> finetune_core::Result<Job> {
        let settings = self.prepare(spec)?;
        let training = finetune_data::localize(&spec.training, &self.stores).await?;
        let validation = match &spec.validation {
            Some(v) => Some(finetune_data::localize(v, &self.stores).await?),
            None => None,
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = JobId::new(format!("local-{}-{n}", Utc::now().format("%Y%m%d%H%M%S")));
        let output_dir = self.runtime.output_root.join(id.as_str());
        let job = Job {
            id: id.clone(),
            provider: NAME.into(),
            base_model: spec.base_model.clone(),
            state: JobState::Queued,
            created_at: Utc::now(),
            metadata: spec.metadata.clone(),
        };
        let entry = Entry {
            job: job.clone(),
            state: Arc::new(Mutex::new(JobState::Queued)),
            curve: Arc::new(Mutex::new(LossCurve::new())),
            cancel: Arc::new(AtomicBool::new(false)),
        };
        let worker = Worker {
            id,
            base_model: spec.base_model.clone(),
            settings,
            training,
            validation,
            output_dir,
            runtime: self.runtime.clone(),
            state: Arc::clone(&entry.state),
            curve: Arc::clone(&entry.curve),
            cancel: Arc::clone(&entry.cancel),
            datasets_read: Arc::clone(&self.datasets_read),
        };
        std::thread::Builder::new()
            .name(format!("finetune-{}", job.id))
            .spawn(move || worker.run())
            .map_err(|e| Error::other("starting the training thread failed", e))?;
        self.entries().push(entry);
        Ok(job)
    }

    async fn job(&self, id: &JobId) -> finetune_core::Result<Job> {
        let jobs = self.entries();
        jobs.iter().find(|e| &e.job.id == id).map(Self::snapshot).ok_or_else(|| Self::not_found(id))
    }

    async fn metrics(&self, id: &JobId) -> finetune_core::Result<LossCurve> {
        let jobs = self.entries();
        let entry = jobs.iter().find(|e| &e.job.id == id).ok_or_else(|| Self::not_found(id))?;
        Ok(lock(&entry.curve).clone())
    }

    async fn cancel(&self, id: &JobId) -> finetune_core::Result<JobState> {
        let jobs = self.entries();
        let entry = jobs.iter().find(|e| &e.job.id == id).ok_or_else(|| Self::not_found(id))?;
        let mut state = lock(&entry.state);
        if state.is_terminal() {
            return match &*state {
                JobState::Cancelled => Ok(JobState::Cancelled),
                other => Err(Error::invalid(format!("job {id} has already {}", other.name()))),
            };
        }
        entry.cancel.store(true, Ordering::Relaxed);
        *state = JobState::Cancelling;
        Ok(JobState::Cancelling)
    }

    async fn list_jobs(&self, query: &ListJobs) -> finetune_core::Result<Page<Job>> {
        let jobs = self.entries();
        let newest_first: Vec<&Entry> = jobs.iter().rev().collect();
        let start = match &query.after {
            Some(after) => {
                newest_first.iter().position(|e| e.job.id.as_str() == after).map_or(0, |i| i + 1)
            }
            None => 0,
        };
        let limit = query.limit.unwrap_or(20).max(1) as usize;
        let items: Vec<Job> =
            newest_first.iter().skip(start).take(limit).map(|e| Self::snapshot(e)).collect();
        let next = (start + items.len() < newest_first.len())
            .then(|| items.last().map(|j| j.id.to_string()))
            .flatten();
        Ok(Page { items, next })
    }
}

/// One job's training thread.
struct Worker {
    id: JobId,
    base_model: String,
    settings: Settings,
    training: LocalDataset,
    validation: Option<LocalDataset>,
    output_dir: PathBuf,
    runtime: Runtime,
    state: Arc<Mutex<JobState>>,
    curve: Arc<Mutex<LossCurve>>,
    cancel: Arc<AtomicBool>,
    datasets_read: Arc<AtomicU64>,
}

impl Worker {
    fn set(&self, new: JobState) {
        let mut state = lock(&self.state);
        // A cancel request stays visible until training notices it.
        if *state == JobState::Cancelling && !new.is_terminal() {
            return;
        }
        *state = new;
    }

    fn run(self) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.train()));
        let end = match outcome {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => JobState::Failed { reason: e.to_string(), code: None },
            Err(_) => JobState::Failed { reason: "the trainer panicked".into(), code: None },
        };
        tracing::info!(job = %self.id, state = %end, "local job finished");
        self.set(end);
    }

    fn train(&self) -> finetune_core::Result<JobState> {
        if self.cancel.load(Ordering::Relaxed) {
            return Ok(JobState::Cancelled);
        }
        self.set(JobState::Validating);
        let read = |d: &LocalDataset| -> finetune_core::Result<Vec<crate::sft::Example>> {
            self.datasets_read.fetch_add(1, Ordering::Relaxed);
            Ok(crate::data::examples_from(d.open()?)?)
        };
        let train = read(&self.training)?;
        let validation = match &self.validation {
            Some(v) => read(v)?,
            None => Vec::new(),
        };
        let job = LocalJob {
            model: self.base_model.clone(),
            train,
            validation,
            config: self.settings.config.clone(),
            format: None,
            truncation: Truncation::KeepEnd,
            outputs: self.settings.outputs,
            output_dir: self.output_dir.clone(),
            resume: false,
        };
        let total = std::cell::Cell::new(0u64);
        let (report, outcome) =
            run_job(&job, &self.runtime, Arc::clone(&self.cancel), |event| match event {
                TrainEvent::Started { total_steps, .. } => {
                    total.set(*total_steps as u64);
                    self.set(JobState::Running {
                        progress: Progress {
                            step: Some(0),
                            total_steps: Some(total.get()),
                            epoch: Some(0.0),
                        },
                    });
                }
                TrainEvent::Step(r) => {
                    lock(&self.curve).upsert(finetune_core::LossPoint {
                        step: r.step as u64,
                        epoch: Some(r.epoch),
                        train_loss: Some(r.loss),
                        learning_rate: Some(r.learning_rate),
                        ..Default::default()
                    });
                    self.set(JobState::Running {
                        progress: Progress {
                            step: Some(r.step as u64),
                            total_steps: Some(total.get()),
                            epoch: Some(r.epoch),
                        },
                    });
                }
                TrainEvent::Eval(r) => lock(&self.curve).upsert(finetune_core::LossPoint {
                    step: r.step as u64,
                    validation_loss: Some(r.validation_loss),
                    validation_token_accuracy: Some(r.validation_token_accuracy),
                    ..Default::default()
                }),
                TrainEvent::Checkpoint { .. } => {}
            })?;
        if report.stop == "cancelled" {
            return Ok(JobState::Cancelled);
        }
        let model_dir = report.merged_dir.clone().or(report.adapter_dir.clone());
        let mut metadata = BTreeMap::new();
        metadata.insert("steps".into(), report.steps.to_string());
        metadata.insert("stop".into(), report.stop.into());
        metadata.insert("output_dir".into(), self.output_dir.display().to_string());
        if let Some(dir) = &report.adapter_dir {
            metadata.insert("adapter_dir".into(), dir.display().to_string());
        }
        if let Some(dir) = &report.merged_dir {
            metadata.insert("merged_dir".into(), dir.display().to_string());
        }
        if let Some((step, loss)) = report.best {
            metadata.insert("best_step".into(), step.to_string());
            metadata.insert("best_validation_loss".into(), loss.to_string());
        }
        let model = FineTunedModel {
            provider: NAME.into(),
            model_id: self.id.to_string(),
            base_model: self.base_model.clone(),
            job_id: Some(self.id.clone()),
            created_at: Utc::now(),
            requires_deployment: false,
            artifacts: ModelArtifacts::LocalDir {
                path: model_dir.unwrap_or_else(|| self.output_dir.clone()),
            },
            loss_curve: outcome.curve,
            metadata,
        };
        Ok(JobState::Succeeded { model: Box::new(model) })
    }
}
