//! The local HuggingFace provider: [`FineTuneProvider`] over [`run_job`](crate::run_job),
//! each job training on its own thread, its state and loss curve shared
//! with the caller, cancel honoured before the next step.
//!
//! Jobs outlive the process: each job's folder under the runtime's output
//! root records its spec, its validated data and its state (see
//! [`crate::job_folder`]'s layout), so a provider in a new process over the
//! same output root lists earlier jobs, reports their final state and
//! model, and — when asked for an interrupted job with [`FineTuneProvider::job`]
//! — takes it over and resumes it from its newest checkpoint (set
//! `checkpoint_every` to bound what an interruption costs). Listings show
//! an interrupted job as `paused` until then. `submit` validates the
//! datasets first, as the cloud providers do: a row without a completion is
//! refused, naming file, row and column. Jobs on one device run one after
//! the other (queued until the device is free), across processes too.
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
//! | `loss_chunk_tokens` | trained positions per LM-head/loss chunk | 512 |
//! | `gradient_checkpointing` | `true`/`"full"`: keep each decoder layer's input and recompute the layer in backward; `"selective"`: keep the frozen projections' outputs too and recompute no projection (Llama family) | false |
//! | `merge` | also write the merged model | false |

use std::collections::BTreeMap;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use finetune_core::{
    Capabilities, DatasetSource, Error, FineTuneProvider, FineTunedModel, Job, JobId, JobSpec,
    JobState, LearningRate, LearningRateKind, ListJobs, Location, LossCurve, ModelArtifacts, Page,
    Progress,
};
use finetune_data::{ConvertOptions, LocalDataset, ObjectStores, OutputFormat};

use crate::job::{LocalJob, Outputs, Runtime, run_job_on};
use crate::job_folder::{JobFolder, Record, device_lock_path, try_lock};
use crate::lora::LoraConfig;
use crate::sft::Truncation;
use crate::train::{Checkpointing, Method, Schedule, TrainConfig, TrainEvent};

/// The provider's name in jobs and models.
pub const NAME: &str = "local_hf";

/// Held by the job training in this process.
static TRAINING: Mutex<()> = Mutex::new(());

/// A job trained by this process.
struct Entry {
    id: JobId,
    state: Arc<Mutex<JobState>>,
    curve: Arc<Mutex<LossCurve>>,
    cancel: Arc<AtomicBool>,
    /// Why a data-parallel run stopped without an end (a rank was lost):
    /// the job is left as recorded, for the restarted ranks to resume.
    interrupted: Arc<Mutex<Option<String>>>,
}

/// Fine-tunes HF models on this machine.
pub struct LocalProvider {
    runtime: Runtime,
    stores: ObjectStores,
    jobs: Mutex<Vec<Entry>>,
    datasets_read: Arc<AtomicU64>,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider").field("runtime", &self.runtime).finish_non_exhaustive()
    }
}

impl LocalProvider {
    /// A provider running jobs with `runtime`; jobs already in its output
    /// root are its jobs too.
    pub fn new(runtime: Runtime) -> Self {
        Self {
            runtime,
            stores: ObjectStores::new(),
            jobs: Mutex::new(Vec::new()),
            datasets_read: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Object stores for datasets given as URLs (`s3://`, `az://`, …).
    pub fn with_object_stores(mut self, stores: ObjectStores) -> Self {
        self.stores = stores;
        self
    }

    /// The runtime jobs run with.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Datasets fetched or opened so far (the local counterpart of uploads).
    pub fn datasets_read(&self) -> u64 {
        self.datasets_read.load(Ordering::Relaxed)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        lock(&self.jobs)
    }

    fn folder(&self, id: &JobId) -> finetune_core::Result<JobFolder> {
        JobFolder::of(&self.runtime.output_root, id)
    }

    fn not_found(id: &JobId) -> Error {
        Error::NotFound { what: format!("local job {id}") }
    }

    /// `f` of the entry of a job this process trains.
    fn with_entry<T>(&self, id: &JobId, f: impl FnOnce(&Entry) -> T) -> Option<T> {
        self.entries().iter().find(|e| &e.id == id).map(f)
    }

    /// The live state of a job this process trains.
    fn live(&self, id: &JobId) -> Option<(JobState, LossCurve)> {
        self.with_entry(id, |e| (lock(&e.state).clone(), lock(&e.curve).clone()))
    }

    /// A spec's training settings for its base model (which it locates).
    fn settings(&self, spec: &JobSpec) -> finetune_core::Result<Settings> {
        let model_dir = crate::locate(&spec.base_model, &self.runtime.cache)
            .map_err(|e| Error::invalid_at(Location::column("base_model"), e.to_string()))?;
        let model_config = crate::ModelConfig::from_dir(&model_dir)
            .map_err(|e| Error::invalid_at(Location::column("base_model"), e.to_string()))?;
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

    /// Everything `validate` checks, returning the parsed job settings.
    fn prepare(&self, spec: &JobSpec) -> finetune_core::Result<Settings> {
        spec.validate_common()?;
        self.capabilities().check(spec)?;
        let settings = self.settings(spec)?;
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
        Ok(settings)
    }

    /// Validates `source` and writes it, in the canonical schema, into the
    /// job's folder: the job then reads the same rows whatever happens to
    /// the original, and a resumed job finds them.
    async fn stage(
        &self,
        source: &DatasetSource,
        role: &'static str,
        folder: &JobFolder,
        counter: Option<Arc<dyn finetune_core::TokenCounter>>,
    ) -> finetune_core::Result<PathBuf> {
        let dataset = finetune_data::localize(source, &self.stores).await?;
        self.datasets_read.fetch_add(1, Ordering::Relaxed);
        let data = folder.dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| Error::io(&data, e))?;
        let path = data.join(format!("{role}.parquet"));
        let out = path.clone();
        let (report, _rows) = tokio::task::spawn_blocking(move || {
            let options = ConvertOptions::default();
            let mut validator =
                finetune_data::Validator::new(dataset.name(), options.validation.clone());
            // With the model's tokenizer, an example the max length would
            // leave without a completion token is an error, not a skip.
            if let Some(counter) = counter {
                validator = validator.with_token_counter(Box::new(counter));
            }
            finetune_data::convert_with(&dataset, &out, OutputFormat::Parquet, &options, validator)
        })
        .await
        .map_err(|e| Error::other("validating the dataset", e))??;
        report.ensure_valid(role)?;
        // Recorded relative to the job's folder: a process that mounts the
        // output root elsewhere (a pod's /output) finds it too.
        Ok(path.strip_prefix(&folder.dir).map_or(path.clone(), Path::to_path_buf))
    }

    /// Starts training `record`'s job with `settings` on its own thread,
    /// owning it through `owner` (the job's lock).
    fn start(
        &self,
        record: Record,
        settings: Settings,
        owner: File,
        resume: bool,
        group: Option<Group>,
    ) -> finetune_core::Result<()> {
        let folder = self.folder(&record.job.id)?;
        let entry = Entry {
            id: record.job.id.clone(),
            state: Arc::new(Mutex::new(record.job.state.clone())),
            curve: Arc::new(Mutex::new(LossCurve::new())),
            cancel: Arc::new(AtomicBool::new(false)),
            interrupted: Arc::new(Mutex::new(None)),
        };
        let worker = Worker {
            record: Mutex::new(record),
            folder,
            settings,
            resume,
            runtime: self.runtime.clone(),
            state: Arc::clone(&entry.state),
            curve: Arc::clone(&entry.curve),
            cancel: Arc::clone(&entry.cancel),
            group: Mutex::new(group),
            interrupted: Arc::clone(&entry.interrupted),
            _owner: owner,
        };
        let name = format!("finetune-{}", entry.id);
        {
            let mut jobs = self.entries();
            jobs.retain(|e| e.id != entry.id);
            jobs.push(entry);
        }
        std::thread::Builder::new()
            .name(name)
            .spawn(move || worker.run())
            .map_err(|e| Error::other("starting the training thread failed", e))?;
        Ok(())
    }

    /// Validates `spec`, makes its job folder with the validated data and
    /// its record (queued), and returns the record, the settings and the
    /// folder's lock: everything but starting it.
    async fn record_job(
        &self,
        spec: &JobSpec,
        given: Option<&JobId>,
    ) -> finetune_core::Result<(Record, Settings, std::fs::File)> {
        let settings = self.prepare(spec)?;
        let root = &self.runtime.output_root;
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let (id, folder) = loop {
            let id = given.cloned().unwrap_or_else(new_job_id);
            let folder = self.folder(&id)?;
            match std::fs::create_dir(&folder.dir) {
                Ok(()) => break (id, folder),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && given.is_none() => {
                    continue;
                }
                Err(e) => return Err(Error::io(&folder.dir, e)),
            }
        };
        // No counter when the model cannot be read yet: the run says why.
        let counter = self.token_counter(spec).await.ok().flatten();
        let staged = async {
            let training = self.stage(&spec.training, "training", &folder, counter.clone()).await?;
            let validation = match &spec.validation {
                Some(v) => Some(self.stage(v, "validation", &folder, counter.clone()).await?),
                None => None,
            };
            Ok::<_, Error>((training, validation))
        }
        .await;
        let (training, validation) = match staged {
            Ok(paths) => paths,
            Err(e) => {
                // A refused job leaves nothing behind.
                let _ = std::fs::remove_dir_all(&folder.dir);
                return Err(e);
            }
        };
        let job = Job {
            id: id.clone(),
            provider: NAME.into(),
            base_model: spec.base_model.clone(),
            state: JobState::Queued,
            created_at: Utc::now(),
            metadata: spec.metadata.clone(),
        };
        let record =
            Record { job: job.clone(), spec: spec.clone(), training, validation, resumed: 0 };
        folder.write(&record)?;
        let owner = folder
            .try_own()?
            .ok_or_else(|| Error::invalid(format!("job {id} is already owned")))?;
        let _ = job;
        Ok((record, settings, owner))
    }

    /// Records a job as `submit` does — validated, its data staged in its
    /// folder — without starting it: a process with the same output root
    /// (a container on a cluster, say) runs it with [`Self::run_recorded`].
    pub async fn record(&self, spec: &JobSpec) -> finetune_core::Result<Job> {
        let (record, _, _owner) = self.record_job(spec, None).await?;
        Ok(record.job)
    }

    /// [`Self::record`] under a given id; a job already recorded under it
    /// is returned as it stands (a retried submit makes no second job).
    pub async fn record_as(&self, spec: &JobSpec, id: &JobId) -> finetune_core::Result<Job> {
        if let Some(record) = self.folder(id)?.read()? {
            return Ok(record.job);
        }
        let (record, _, _owner) = self.record_job(spec, Some(id)).await?;
        Ok(record.job)
    }

    /// The job as its folder records it (no take-over).
    #[cfg(feature = "kubernetes")]
    pub(crate) fn recorded(&self, id: &JobId) -> finetune_core::Result<Option<Job>> {
        Ok(self.folder(id)?.read()?.map(|r| r.job))
    }

    /// Asks whoever trains the job (another process, a pod) to stop at its
    /// next step, and any later run of it not to start.
    #[cfg(feature = "kubernetes")]
    pub(crate) fn request_cancel(&self, id: &JobId) -> finetune_core::Result<()> {
        self.folder(id)?.request_cancel()
    }

    /// Whether a cancel was asked for the job.
    #[cfg(feature = "kubernetes")]
    pub(crate) fn cancel_requested(&self, id: &JobId) -> finetune_core::Result<bool> {
        Ok(self.folder(id)?.cancel_requested())
    }

    /// Records `state` for a job nobody trains (a cancelled cluster job).
    #[cfg(feature = "kubernetes")]
    pub(crate) fn set_recorded_state(
        &self,
        id: &JobId,
        state: JobState,
    ) -> finetune_core::Result<()> {
        let folder = self.folder(id)?;
        let mut record = folder.read()?.ok_or_else(|| Self::not_found(id))?;
        record.job.state = state;
        folder.write(&record)?;
        Ok(())
    }

    /// The output root job folders are under.
    pub fn output_root(&self) -> &std::path::Path {
        &self.runtime.output_root
    }

    /// Runs a recorded job to its end in this process: starts it, or
    /// resumes it from its newest checkpoint when an earlier process was
    /// stopped while training it (a restarted pod, say), and waits. A job
    /// that another live process trains is an error; a finished one is
    /// returned as it is.
    pub async fn run_recorded(&self, id: &JobId) -> finetune_core::Result<Job> {
        self.run_recorded_with(id, None).await
    }

    /// [`Self::run_recorded`] as one rank of a data-parallel run (see
    /// [`crate::train::Trainer::data_parallel`]) when `group` is given.
    /// Rank 0 runs the job as above, recording its state and writing its
    /// outputs; any other rank trains its share, writes nothing, and
    /// returns the job as rank 0 records it once it has ended.
    pub async fn run_recorded_with(
        &self,
        id: &JobId,
        group: Option<Group>,
    ) -> finetune_core::Result<Job> {
        let group = match group {
            Some(g) if g.rank() > 0 => return self.run_as_rank(id, g).await,
            other => other,
        };
        let folder = self.folder(id)?;
        let record = folder.read()?.ok_or_else(|| Self::not_found(id))?;
        if record.job.state.is_terminal() {
            return Ok(record.job);
        }
        let job = self.job_in_folder(id, true, group)?;
        if self.live(id).is_none() && !job.state.is_terminal() {
            return Err(Error::invalid(format!("job {id} is being trained by another process")));
        }
        loop {
            match self.live(id) {
                Some((state, _)) if !state.is_terminal() => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                _ => break,
            }
        }
        if let Some(why) = self.with_entry(id, |e| lock(&e.interrupted).clone()).flatten() {
            return Err(Error::Transient {
                message: format!("job {id}: {why}; it resumes when the ranks are started again"),
            });
        }
        // The worker writes the final record before it ends.
        let record = folder.read()?.ok_or_else(|| Self::not_found(id))?;
        match self.live(id) {
            Some((state, _)) => Ok(Job { state, ..record.job }),
            None => Ok(record.job),
        }
    }

    /// A rank other than 0 of a data-parallel run of a recorded job: trains
    /// its share (resuming, as rank 0 does, from the newest checkpoint) and
    /// waits for rank 0's final record.
    async fn run_as_rank(&self, id: &JobId, group: Group) -> finetune_core::Result<Job> {
        let folder = self.folder(id)?;
        let record = folder.read()?.ok_or_else(|| Self::not_found(id))?;
        if record.job.state.is_terminal() {
            return Ok(record.job);
        }
        let settings = self.settings(&record.spec)?;
        let job = local_job(&record, &settings, &folder, true)?;
        let runtime = self.runtime.clone();
        // Cancels reach every rank through rank 0 (the ranks agree each step).
        let cancel = Arc::new(AtomicBool::new(false));
        tokio::task::spawn_blocking(move || {
            let mut group = group;
            let group: &mut dyn crate::train::Collective = group.as_mut();
            run_job_on(&job, &runtime, cancel, |_| {}, Some(group))
        })
        .await
        .map_err(|e| Error::other("the training thread failed", e))??;
        loop {
            let record = folder.read()?.ok_or_else(|| Self::not_found(id))?;
            if record.job.state.is_terminal() {
                return Ok(record.job);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A job from its folder: taken over and resumed when it was
    /// interrupted (`take_over`), else as recorded.
    fn job_in_folder(
        &self,
        id: &JobId,
        take_over: bool,
        group: Option<Group>,
    ) -> finetune_core::Result<Job> {
        let folder = self.folder(id)?;
        let record = folder.read()?.ok_or_else(|| Self::not_found(id))?;
        if record.job.state.is_terminal() {
            return Ok(record.job);
        }
        let Some(owner) = folder.try_own()? else {
            // Another process trains it; its record is the news.
            return Ok(record.job);
        };
        if !take_over {
            let mut job = record.job;
            job.state = JobState::Paused;
            return Ok(job);
        }
        if folder.cancel_requested() {
            let mut record = record;
            record.job.state = JobState::Cancelled;
            folder.write(&record)?;
            return Ok(record.job);
        }
        tracing::info!(job = %id, "resuming an interrupted local job from its newest checkpoint");
        let mut record = record;
        record.resumed += 1;
        record.job.state = JobState::Queued;
        folder.write(&record)?;
        let job = record.job.clone();
        let settings = self.settings(&record.spec)?;
        self.start(record, settings, owner, true, group)?;
        Ok(job)
    }
}

fn new_job_id() -> JobId {
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    JobId::new(format!("local-{}-{:08x}", Utc::now().format("%Y%m%d%H%M%S"), random as u32))
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
            "loss_chunk_tokens",
            "gradient_checkpointing",
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
            loss_chunk_tokens: match uint("loss_chunk_tokens")? {
                Some(n) => Some(n),
                None => TrainConfig::default().loss_chunk_tokens,
            },
            gradient_checkpointing: match extras.get("gradient_checkpointing") {
                None => Checkpointing::Off,
                Some(serde_json::Value::Bool(on)) => {
                    if *on {
                        Checkpointing::Full
                    } else {
                        Checkpointing::Off
                    }
                }
                Some(v) => v.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                    bad(
                        "gradient_checkpointing",
                        "must be true, false, \"off\", \"full\" or \"selective\"",
                    )
                })?,
            },
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

    fn data_rules(&self, spec: &JobSpec) -> Option<finetune_core::DataRules> {
        Some(finetune_core::DataRules::builtin(
            &finetune_core::ProviderKind::LocalHf,
            &spec.base_model,
        ))
    }

    /// The model's tokenizer and chat template at the run's max length, so
    /// validation reports what the run would cut or skip.
    async fn token_counter(
        &self,
        spec: &JobSpec,
    ) -> finetune_core::Result<Option<Arc<dyn finetune_core::TokenCounter>>> {
        let settings = self.settings(spec)?;
        let dir = crate::locate(&spec.base_model, &self.runtime.cache)
            .map_err(|e| Error::invalid_at(Location::column("base_model"), e.to_string()))?;
        let counter = crate::sft::TemplateTokens::for_model(
            &dir,
            settings.config.max_length,
            Truncation::KeepEnd,
        )
        .map_err(|e| Error::invalid_at(Location::file(dir.display().to_string()), e.to_string()))?;
        Ok(Some(Arc::new(counter)))
    }

    async fn submit(&self, spec: &JobSpec) -> finetune_core::Result<Job> {
        let (record, settings, owner) = self.record_job(spec, None).await?;
        let job = record.job.clone();
        self.start(record, settings, owner, false, None)?;
        Ok(job)
    }

    async fn job(&self, id: &JobId) -> finetune_core::Result<Job> {
        if let Some((state, _)) = self.live(id) {
            let record = self.folder(id)?.read()?.ok_or_else(|| Self::not_found(id))?;
            return Ok(Job { state, ..record.job });
        }
        self.job_in_folder(id, true, None)
    }

    async fn metrics(&self, id: &JobId) -> finetune_core::Result<LossCurve> {
        if let Some((_, curve)) = self.live(id) {
            return Ok(curve);
        }
        let folder = self.folder(id)?;
        let record = folder.read()?.ok_or_else(|| Self::not_found(id))?;
        let path = folder.dir.join("metrics.jsonl");
        if path.is_file() {
            let mut curve = LossCurve::new();
            for line in crate::train::read_metrics(&path)? {
                curve.upsert(line.point());
            }
            return Ok(curve);
        }
        Ok(match record.job.state {
            JobState::Succeeded { model } => model.loss_curve,
            _ => LossCurve::new(),
        })
    }

    async fn cancel(&self, id: &JobId) -> finetune_core::Result<JobState> {
        let already = |state: &JobState| match state {
            JobState::Cancelled => Ok(JobState::Cancelled),
            other => Err(Error::invalid(format!("job {id} has already {}", other.name()))),
        };
        let live = self.with_entry(id, |entry| {
            let mut state = lock(&entry.state);
            if state.is_terminal() {
                return already(&state);
            }
            entry.cancel.store(true, Ordering::Relaxed);
            *state = JobState::Cancelling;
            Ok(JobState::Cancelling)
        });
        if let Some(result) = live {
            return result;
        }
        let folder = self.folder(id)?;
        let mut record = folder.read()?.ok_or_else(|| Self::not_found(id))?;
        if record.job.state.is_terminal() {
            return already(&record.job.state);
        }
        folder.request_cancel()?;
        match folder.try_own()? {
            // Interrupted: nobody will resume it now.
            Some(_owner) => {
                record.job.state = JobState::Cancelled;
                folder.write(&record)?;
                Ok(JobState::Cancelled)
            }
            // Another process trains it and stops at its next step.
            None => Ok(JobState::Cancelling),
        }
    }

    async fn list_jobs(&self, query: &ListJobs) -> finetune_core::Result<Page<Job>> {
        let root = &self.runtime.output_root;
        let mut jobs = Vec::new();
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Page { items: Vec::new(), next: None });
            }
            Err(e) => return Err(Error::io(root, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(root, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let id = JobId::new(name);
            let Ok(folder) = self.folder(&id) else { continue };
            if !folder.dir.join("job.json").is_file() {
                continue;
            }
            let job = match self.live(&id) {
                Some((state, _)) => match folder.read()? {
                    Some(record) => Job { state, ..record.job },
                    None => continue,
                },
                None => self.job_in_folder(&id, false, None)?,
            };
            jobs.push(job);
        }
        Ok(page_of(jobs, query))
    }
}

/// One page of `jobs`, newest first, after `query.after`'s job.
pub(crate) fn page_of(mut jobs: Vec<Job>, query: &ListJobs) -> Page<Job> {
    jobs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
    let start = match &query.after {
        Some(after) => jobs.iter().position(|j| j.id.as_str() == after).map_or(0, |i| i + 1),
        None => 0,
    };
    let limit = query.limit.unwrap_or(20).max(1) as usize;
    let items: Vec<Job> = jobs.iter().skip(start).take(limit).cloned().collect();
    let next = (start + items.len() < jobs.len())
        .then(|| items.last().map(|j| j.id.to_string()))
        .flatten();
    Page { items, next }
}

/// The other ranks of a data-parallel run, as a job's worker holds them.
pub type Group = Box<dyn crate::train::Collective + Send>;

/// The job a record describes, its data read from the job's folder.
fn local_job(
    record: &Record,
    settings: &Settings,
    folder: &JobFolder,
    resume: bool,
) -> finetune_core::Result<LocalJob> {
    let read = |path: &PathBuf| -> finetune_core::Result<Vec<crate::sft::Example>> {
        // Relative to the folder (an absolute path, from an older record,
        // stays as it is).
        let path = folder.dir.join(path);
        let source = DatasetSource::new(&path.display().to_string())?;
        Ok(crate::data::examples_from(LocalDataset::local(&source)?.open()?)?)
    };
    let train = read(&record.training)?;
    let validation = match &record.validation {
        Some(v) => read(v)?,
        None => Vec::new(),
    };
    Ok(LocalJob {
        model: record.spec.base_model.clone(),
        train,
        validation,
        config: settings.config.clone(),
        format: None,
        truncation: Truncation::KeepEnd,
        outputs: settings.outputs,
        output_dir: folder.dir.clone(),
        resume,
    })
}

/// One job's training thread. It owns the job (its folder's lock) while it
/// lives.
struct Worker {
    record: Mutex<Record>,
    folder: JobFolder,
    settings: Settings,
    resume: bool,
    runtime: Runtime,
    state: Arc<Mutex<JobState>>,
    curve: Arc<Mutex<LossCurve>>,
    cancel: Arc<AtomicBool>,
    /// The other ranks, when the job runs data-parallel.
    group: Mutex<Option<Group>>,
    interrupted: Arc<Mutex<Option<String>>>,
    _owner: File,
}

impl Worker {
    fn id(&self) -> JobId {
        lock(&self.record).job.id.clone()
    }

    /// Publishes a state, to this process and to the folder.
    /// The folder is written first: whoever sees a state here finds it
    /// (or a newer one) in the folder too.
    fn set(&self, new: JobState) {
        let mut state = lock(&self.state);
        // A cancel request stays visible until training notices it.
        if *state == JobState::Cancelling && !new.is_terminal() {
            return;
        }
        let mut record = lock(&self.record);
        record.job.state = new.clone();
        if let Err(e) = self.folder.write(&record) {
            tracing::warn!(job = %record.job.id, error = %e, "could not record the job's state");
        }
        *state = new;
    }

    fn cancelled(&self) -> bool {
        if self.folder.cancel_requested() {
            self.cancel.store(true, Ordering::Relaxed);
        }
        self.cancel.load(Ordering::Relaxed)
    }

    fn run(self) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.train()));
        let end = match outcome {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => JobState::Failed { reason: e.to_string(), code: None },
            Err(_) => JobState::Failed { reason: "the trainer panicked".into(), code: None },
        };
        if let Some(why) = lock(&self.interrupted).clone() {
            // Not an end: the record stays as it is (like a killed
            // process's), and the restarted ranks resume from it.
            tracing::warn!(job = %self.id(), "data-parallel run interrupted: {why}");
            *lock(&self.state) = end;
            return;
        }
        tracing::info!(job = %self.id(), state = %end, "local job finished");
        self.set(end);
    }

    /// Waits for the device, then trains. The device's lock is held until
    /// training ends.
    fn train(&self) -> finetune_core::Result<JobState> {
        let device = self.runtime.resolved_device();
        let lock_path = device_lock_path(&self.runtime.output_root, device);
        let (_process, _device) = loop {
            if self.cancelled() {
                return Ok(JobState::Cancelled);
            }
            // libtorch's random generator is one per process: two trainings
            // in one process would reseed each other's dropout, so they
            // take turns whatever their devices; the file lock makes jobs
            // of other processes on the same device wait too.
            let process = match TRAINING.try_lock() {
                Ok(guard) => Some(guard),
                // A panicked training left no state behind the lock.
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(process) = process
                && let Some(device) = try_lock(&lock_path)?
            {
                break (process, device);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if self.cancelled() {
            return Ok(JobState::Cancelled);
        }
        self.set(JobState::Validating);
        let (spec, job) = {
            let r = lock(&self.record);
            (r.spec.clone(), local_job(&r, &self.settings, &self.folder, self.resume)?)
        };
        let mut group = lock(&self.group).take();
        let group = group.as_deref_mut().map(|g| g as &mut dyn crate::train::Collective);
        let total = std::cell::Cell::new(0u64);
        let (report, outcome) = run_job_on(
            &job,
            &self.runtime,
            Arc::clone(&self.cancel),
            |event| match event {
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
                    // A cancel asked for through the folder (another
                    // process) is seen here.
                    self.cancelled();
                }
                TrainEvent::Eval(r) => lock(&self.curve).upsert(finetune_core::LossPoint {
                    step: r.step as u64,
                    validation_loss: Some(r.validation_loss),
                    validation_token_accuracy: Some(r.validation_token_accuracy),
                    ..Default::default()
                }),
                TrainEvent::MicroBatchHalved { step, micro_batch_size } => {
                    tracing::warn!(step, micro_batch_size, "out of memory: micro-batch halved");
                }
                _ => {}
            },
            group,
        )
        .map_err(|e| {
            if let crate::LocalError::Distributed { .. } = e {
                *lock(&self.interrupted) = Some(e.to_string());
            }
            e
        })?;
        if report.stop == "cancelled" {
            return Ok(JobState::Cancelled);
        }
        let id = self.id();
        let model_dir = report.merged_dir.clone().or(report.adapter_dir.clone());
        let mut metadata = BTreeMap::new();
        metadata.insert("steps".into(), report.steps.to_string());
        let config = &self.settings.config;
        let resolved = serde_json::json!({
            "method": match &config.method { Method::Full => "full", Method::Lora(_) => "lora" },
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "micro_batch_size": config.micro_batch_size,
            "learning_rate": config.learning_rate,
            "max_length": config.max_length,
            "packing": config.packing,
            "seed": config.seed,
        });
        metadata.insert(finetune_core::HYPERPARAMETERS_KEY.into(), resolved.to_string());
        metadata.insert("stop".into(), report.stop.into());
        metadata.insert("output_dir".into(), self.folder.dir.display().to_string());
        metadata.insert("base_model_dir".into(), report.model_dir.display().to_string());
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
        let resumed = lock(&self.record).resumed;
        if resumed > 0 {
            metadata.insert("resumed".into(), resumed.to_string());
        }
        // The whole curve, including steps before a resume, is in the
        // folder's metrics.
        let mut curve = LossCurve::new();
        let metrics = self.folder.dir.join("metrics.jsonl");
        if metrics.is_file() {
            for line in crate::train::read_metrics(&metrics)? {
                curve.upsert(line.point());
            }
        } else {
            curve = outcome.curve;
        }
        let model = FineTunedModel {
            provider: NAME.into(),
            model_id: id.to_string(),
            base_model: spec.base_model.clone(),
            job_id: Some(id),
            created_at: Utc::now(),
            requires_deployment: false,
            artifacts: ModelArtifacts::LocalDir {
                path: model_dir.unwrap_or_else(|| self.folder.dir.clone()),
            },
            loss_curve: curve,
            metadata,
        };
        Ok(JobState::Succeeded { model: Box::new(model) })
    }
}
