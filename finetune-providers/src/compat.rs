//! What OpenAI and Azure OpenAI share: the wire format of files, jobs,
//! events and checkpoints, the mapping onto core types, the result-file CSV,
//! and one engine that runs every flow for both. The two providers differ in
//! a handful of places, each marked by [`Flavor`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use finetune_core::{
    Capabilities, Error, FineTunedModel, Job, JobId, JobSpec, JobState, LearningRate,
    LearningRateKind, ListJobs, Location, LossCurve, LossPoint, ModelArtifacts, Page, Progress,
    Result, Setting,
};
use finetune_data::{ObjectStores, OutputFormat};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::http::{Api, Failure};

/// The metadata key under which a job carries the id of the request that
/// created it, so that a retried create finds the job instead of making a
/// second one.
pub const REQUEST_ID_KEY: &str = "finetune_request_id";

/// The fewest training rows OpenAI and Azure OpenAI accept.
pub const MIN_TRAINING_ROWS: u64 = 10;

/// An event of a fine-tuning job: a message or a metrics report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The event's id.
    pub id: String,
    /// When it happened.
    pub created_at: Option<DateTime<Utc>>,
    /// `info`, `warn` (OpenAI) or `warning` (Azure), `error`.
    pub level: String,
    /// What happened.
    pub message: String,
    /// `message` or `metrics`.
    pub kind: String,
    /// Machine-readable data (the step's losses for metrics events).
    pub data: Option<serde_json::Value>,
}

/// A checkpoint the provider kept during training: a usable model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The checkpoint's id.
    pub id: String,
    /// When it was made.
    pub created_at: Option<DateTime<Utc>>,
    /// The model id to call the checkpoint by.
    pub model_id: String,
    /// The step it was taken at.
    pub step: u64,
    /// Its metrics (`train_loss`, `valid_loss`, `full_valid_loss`, …).
    pub metrics: BTreeMap<String, f64>,
}

/// A training or validation file on the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedFile {
    /// The provider's file id.
    pub id: String,
    /// The name it was uploaded under (`finetune-<content hash>.jsonl`).
    pub file_name: String,
    /// Its size.
    pub bytes: u64,
    /// The SHA-256 of its content, hex.
    pub sha256: String,
    /// Whether an identical file already on the provider was reused.
    pub reused: bool,
}

pub(crate) use crate::chat::{ChatCompletion, ChatMessage};

/// Which of the two APIs an engine speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    OpenAi,
    Azure,
}

// ---------------------------------------------------------------- wire ----

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct WireJob {
    #[serde(default)]
    pub(crate) id: String,
    #[serde(default)]
    created_at: Option<i64>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    fine_tuned_model: Option<String>,
    #[serde(default)]
    training_file: Option<String>,
    #[serde(default)]
    validation_file: Option<String>,
    #[serde(default)]
    result_files: Option<Vec<String>>,
    #[serde(default)]
    finished_at: Option<i64>,
    #[serde(default)]
    error: Option<WireJobError>,
    #[serde(default)]
    trained_tokens: Option<i64>,
    #[serde(default)]
    estimated_finish: Option<i64>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct WireJobError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    param: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireList<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
    #[serde(default)]
    has_more: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct WireEvent {
    #[serde(default)]
    id: String,
    #[serde(default)]
    created_at: Option<i64>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct WireCheckpoint {
    #[serde(default)]
    id: String,
    #[serde(default)]
    created_at: Option<i64>,
    #[serde(default)]
    fine_tuned_model_checkpoint: String,
    #[serde(default)]
    step_number: Option<i64>,
    #[serde(default)]
    metrics: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct WireFile {
    #[serde(default)]
    id: String,
    #[serde(default)]
    filename: String,
    #[serde(default)]
    bytes: Option<i64>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    status_details: Option<String>,
}

fn time(secs: Option<i64>) -> Option<DateTime<Utc>> {
    secs.and_then(|s| Utc.timestamp_opt(s, 0).single())
}

/// Maps a status of either API onto the core state. `paused` is sent though
/// missing from OpenAI's spec; Azure says `created` and `pending` where
/// OpenAI says `validating_files` and `queued`. Anything else is `Unknown`.
pub(crate) fn map_status(status: &str) -> Option<JobState> {
    Some(match status {
        "validating_files" => JobState::Validating,
        "queued" | "created" | "pending" => JobState::Queued,
        "running" => JobState::Running { progress: Progress::default() },
        "paused" => JobState::Paused,
        "cancelling" => JobState::Cancelling,
        "cancelled" | "canceled" => JobState::Cancelled,
        _ => return None,
    })
}

/// A metrics event's data as a loss point.
fn point_from_data(data: &serde_json::Value) -> Option<(LossPoint, Option<u64>)> {
    let num = |k: &str| data.get(k).and_then(serde_json::Value::as_f64).filter(|v| v.is_finite());
    let step =
        data.get("step").and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))?;
    let total = data.get("total_steps").and_then(serde_json::Value::as_u64);
    let point = LossPoint {
        step,
        epoch: num("epoch"),
        train_loss: num("train_loss"),
        validation_loss: num("full_valid_loss").or_else(|| num("valid_loss")),
        token_accuracy: num("train_mean_token_accuracy").or_else(|| num("train_accuracy")),
        validation_token_accuracy: num("full_valid_mean_token_accuracy")
            .or_else(|| num("valid_mean_token_accuracy"))
            .or_else(|| num("valid_accuracy")),
        learning_rate: num("learning_rate"),
    };
    Some((point, total))
}

/// The loss curve from a job's result file: a CSV with a header naming
/// `step`, `train_loss`, `train_accuracy` (or `train_mean_token_accuracy`),
/// `valid_loss`, `valid_mean_token_accuracy` (validation cells may be
/// empty). OpenAI serves the file base64-encoded; both encodings are read.
/// A cell that is not a number is an error naming the file, line and column.
pub fn curve_from_result_csv(file: &str, content: &[u8]) -> Result<LossCurve> {
    let decoded;
    let text = {
        let trimmed = content.trim_ascii();
        if trimmed.starts_with(b"step") || trimmed.is_empty() {
            trimmed
        } else {
            use base64::Engine as _;
            let compact: Vec<u8> =
                trimmed.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
            decoded = base64::engine::general_purpose::STANDARD.decode(compact).map_err(|_| {
                Error::invalid_at(
                    Location::file(file).with_line(1),
                    "the result file is neither CSV with a `step` column nor base64 of one",
                )
            })?;
            decoded.trim_ascii()
        }
    };
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(text);
    let headers = reader
        .headers()
        .map_err(|e| Error::invalid_at(Location::file(file).with_line(1), e.to_string()))?
        .clone();
    let col =
        |names: &[&str]| names.iter().find_map(|n| headers.iter().position(|h| h.trim() == *n));
    let step_col = col(&["step"]).ok_or_else(|| {
        Error::invalid_at(Location::file(file).with_line(1), "the result file has no `step` column")
    })?;
    let train = col(&["train_loss"]);
    let train_acc = col(&["train_mean_token_accuracy", "train_accuracy"]);
    let valid = col(&["full_valid_loss", "valid_loss"]);
    let valid_acc = col(&[
        "full_valid_mean_token_accuracy",
        "valid_mean_token_accuracy",
        "validation_mean_token_accuracy",
        "valid_accuracy",
    ]);
    let mut curve = LossCurve::new();
    for (i, record) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let record = record
            .map_err(|e| Error::invalid_at(Location::file(file).with_line(line), e.to_string()))?;
        let cell = |c: Option<usize>| -> Result<Option<f64>> {
            let Some(c) = c else { return Ok(None) };
            let raw = record.get(c).unwrap_or("").trim();
            if raw.is_empty() {
                return Ok(None);
            }
            raw.parse::<f64>().map(Some).map_err(|_| {
                Error::invalid_at(
                    Location::file(file).with_line(line).with_column(headers[c].trim()),
                    format!("`{raw}` is not a number"),
                )
            })
        };
        let step = cell(Some(step_col))?.ok_or_else(|| {
            Error::invalid_at(
                Location::file(file).with_line(line).with_column("step"),
                "the step is missing",
            )
        })?;
        curve.upsert(LossPoint {
            step: step as u64,
            train_loss: cell(train)?,
            token_accuracy: cell(train_acc)?,
            validation_loss: cell(valid)?,
            validation_token_accuracy: cell(valid_acc)?,
            ..LossPoint::default()
        });
    }
    Ok(curve)
}

/// The loss curve from metrics events.
pub fn curve_from_events(events: &[JobEvent]) -> LossCurve {
    let mut curve = LossCurve::new();
    for e in events {
        if e.kind == "metrics"
            && let Some((point, _)) = e.data.as_ref().and_then(point_from_data)
        {
            curve.upsert(point);
        }
    }
    curve
}

impl From<WireEvent> for JobEvent {
    fn from(w: WireEvent) -> Self {
        Self {
            id: w.id,
            created_at: time(w.created_at),
            level: w.level.unwrap_or_else(|| "info".into()),
            message: w.message.unwrap_or_default(),
            kind: w.kind.unwrap_or_else(|| "message".into()),
            data: w.data,
        }
    }
}

// -------------------------------------------------------------- engine ----

/// Runs every flow of an OpenAI-style fine-tuning API.
pub(crate) struct Engine {
    pub(crate) api: Api,
    pub(crate) flavor: Flavor,
    pub(crate) stores: ObjectStores,
    /// Files uploaded by this engine, by content hash.
    uploaded: tokio::sync::Mutex<HashMap<String, UploadedFile>>,
    uploads: AtomicU64,
    /// How long to wait for Azure to finish importing an uploaded file.
    pub(crate) file_import_timeout: Duration,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("flavor", &self.flavor)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// Ids go into URL paths: refuse anything that would change the path.
fn checked_id<'a>(what: &str, id: &'a str) -> Result<&'a str> {
    let ok = !id.is_empty()
        && id.len() <= 256
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(id)
    } else {
        Err(Error::invalid_at(Location::column(what), format!("`{id}` is not a valid {what}")))
    }
}

impl Engine {
    pub(crate) fn new(api: Api, flavor: Flavor) -> Self {
        Self {
            api,
            flavor,
            stores: ObjectStores::new(),
            uploaded: tokio::sync::Mutex::new(HashMap::new()),
            uploads: AtomicU64::new(0),
            file_import_timeout: Duration::from_secs(600),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self.flavor {
            Flavor::OpenAi => "openai",
            Flavor::Azure => "azure_openai",
        }
    }

    pub(crate) fn capabilities(&self) -> Capabilities {
        Capabilities::full(LearningRateKind::Multiplier)
            .with_requires_deployment(self.flavor == Flavor::Azure)
            .with_min_training_rows(MIN_TRAINING_ROWS)
    }

    /// Files this engine uploaded (not counting reused ones).
    pub(crate) fn uploads(&self) -> u64 {
        self.uploads.load(Ordering::Relaxed)
    }

    /// The spec's own rules; no dataset is read.
    pub(crate) fn validate_spec(&self, spec: &JobSpec) -> Result<()> {
        spec.validate_common()?;
        self.capabilities().check(spec)?;
        let h = &spec.hyperparameters;
        if let Some(e) = h.epochs.value()
            && e > 50
        {
            return Err(Error::invalid_at(
                Location::column("hyperparameters.epochs"),
                format!("must be between 1 and 50, got {e}"),
            ));
        }
        if let Some(b) = h.batch_size.value()
            && b > 256
        {
            return Err(Error::invalid_at(
                Location::column("hyperparameters.batch_size"),
                format!("must be between 1 and 256, got {b}"),
            ));
        }
        if let Some(suffix) = &spec.suffix {
            match self.flavor {
                Flavor::OpenAi if suffix.chars().count() > 64 => {
                    return Err(Error::invalid_at(
                        Location::column("suffix"),
                        "OpenAI takes at most 64 characters",
                    ));
                }
                Flavor::Azure
                    if suffix.len() > 40
                        || !suffix
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')) =>
                {
                    return Err(Error::invalid_at(
                        Location::column("suffix"),
                        "Azure OpenAI takes at most 40 characters of a-z, A-Z, 0-9, - and _",
                    ));
                }
                _ => {}
            }
        }
        if let Some(seed) = spec.seed
            && seed > i32::MAX as u64
        {
            return Err(Error::invalid_at(
                Location::column("seed"),
                format!("must be at most {}, got {seed}", i32::MAX),
            ));
        }
        if self.flavor == Flavor::OpenAi {
            // One of OpenAI's 16 metadata pairs carries the request id.
            if spec.metadata.len() > 15 {
                return Err(Error::invalid_at(
                    Location::column("metadata"),
                    format!("at most 15 labels, got {}", spec.metadata.len()),
                ));
            }
            for (k, v) in &spec.metadata {
                if k.chars().count() > 64 || v.chars().count() > 512 || k == REQUEST_ID_KEY {
                    return Err(Error::invalid_at(
                        Location::column(format!("metadata.{k}")),
                        format!(
                            "keys take at most 64 characters, values 512, and `{REQUEST_ID_KEY}` \
                             is reserved"
                        ),
                    ));
                }
            }
        }
        if let Some(key) = spec.extras.keys().next() {
            return Err(Error::invalid_at(
                Location::column(format!("extras.{key}")),
                format!("{} takes no provider-specific settings", self.name()),
            ));
        }
        Ok(())
    }

    /// The spec's rules plus the datasets' presence; nothing is uploaded.
    pub(crate) fn validate(&self, spec: &JobSpec) -> Result<()> {
        self.validate_spec(spec)?;
        for (field, source) in std::iter::once(("training", &spec.training))
            .chain(spec.validation.iter().map(|v| ("validation", v)))
        {
            source.resolved_format().map_err(|e| match e {
                Error::InvalidInput { message, .. } => Error::invalid_at(
                    Location::file(source.location.to_string()).with_column(field),
                    message,
                ),
                other => other,
            })?;
            if let finetune_core::DatasetLocation::Path(p) = &source.location
                && !p.is_file()
            {
                return Err(Error::invalid_at(
                    Location::file(p.display().to_string()),
                    format!("the {field} dataset does not exist"),
                ));
            }
        }
        Ok(())
    }

    /// Converts a dataset to chat JSONL (validating it; an invalid dataset is
    /// an error naming its first problem), then uploads it unless an
    /// identical file is there already.
    pub(crate) async fn prepare_file(
        &self,
        source: &finetune_core::DatasetSource,
        role: &str,
    ) -> Result<UploadedFile> {
        let min_rows = if role == "training" { MIN_TRAINING_ROWS } else { 1 };
        let prepared = crate::prepare::convert_for_upload(
            &self.stores,
            source,
            role,
            OutputFormat::OpenAiChat,
            min_rows,
        )
        .await?;
        let (sha256, bytes, out) = (prepared.sha256.clone(), prepared.bytes, &prepared.path);
        tracing::debug!(role, rows = prepared.rows, bytes, "dataset converted to chat JSONL");
        let file_name = format!("finetune-{}.jsonl", &sha256[..32]);
        if let Some(found) = self.uploaded.lock().await.get(&sha256) {
            return Ok(UploadedFile { reused: true, ..found.clone() });
        }
        if let Some(id) = self.find_file(&file_name, bytes).await? {
            let file = UploadedFile { id, file_name, bytes, sha256: sha256.clone(), reused: true };
            self.uploaded.lock().await.insert(sha256, file.clone());
            return Ok(file);
        }
        let wire: WireFile = self
            .api
            .upload("/files", out, &file_name, &[("purpose", "fine-tune".to_owned())])
            .await?;
        self.uploads.fetch_add(1, Ordering::Relaxed);
        let id = checked_id("file id", &wire.id)?.to_owned();
        self.await_import(&wire).await?;
        let file = UploadedFile { id, file_name, bytes, sha256: sha256.clone(), reused: false };
        self.uploaded.lock().await.insert(sha256, file.clone());
        Ok(file)
    }

    /// An uploaded fine-tune file with this name and size that is usable.
    async fn find_file(&self, file_name: &str, bytes: u64) -> Result<Option<String>> {
        let mut query = vec![("purpose", "fine-tune".to_owned())];
        if self.flavor == Flavor::OpenAi {
            query.push(("limit", "10000".to_owned()));
        }
        let list: WireList<WireFile> = self.api.json(Method::GET, "/files", &query, None).await?;
        Ok(list
            .data
            .into_iter()
            .find(|f| {
                f.filename == file_name
                    && f.bytes.is_none_or(|b| b == bytes as i64)
                    && !matches!(f.status.as_deref(), Some("error" | "deleting" | "deleted"))
            })
            .map(|f| f.id))
    }

    /// Azure imports uploaded files asynchronously: wait until processed.
    async fn await_import(&self, wire: &WireFile) -> Result<()> {
        let started = tokio::time::Instant::now();
        let mut status = wire.status.clone();
        let mut details = wire.status_details.clone();
        loop {
            match status.as_deref() {
                Some("error") => {
                    return Err(Error::invalid_at(
                        Location::file(wire.filename.clone()),
                        format!(
                            "the provider refused the file: {}",
                            details.unwrap_or_else(|| "no details given".into())
                        ),
                    ));
                }
                Some("pending" | "running") if started.elapsed() < self.file_import_timeout => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let path = format!("/files/{}", checked_id("file id", &wire.id)?);
                    let now: WireFile = self.api.json(Method::GET, &path, &[], None).await?;
                    status = now.status;
                    details = now.status_details;
                }
                Some("pending" | "running") => {
                    return Err(Error::TimedOut { after: started.elapsed() });
                }
                _ => return Ok(()),
            }
        }
    }

    fn create_body(
        &self,
        spec: &JobSpec,
        training: &str,
        validation: Option<&str>,
        request_id: &str,
    ) -> serde_json::Value {
        let h = &spec.hyperparameters;
        let lr = |s: Setting<LearningRate>| match s {
            Setting::Value(LearningRate::Multiplier(v) | LearningRate::Absolute(v)) => {
                serde_json::json!(v)
            }
            Setting::Auto => serde_json::json!("auto"),
        };
        let mut body = serde_json::json!({ "model": spec.base_model, "training_file": training });
        if let Some(v) = validation {
            body["validation_file"] = v.into();
        }
        if let Some(s) = &spec.suffix {
            body["suffix"] = s.clone().into();
        }
        if let Some(seed) = spec.seed {
            body["seed"] = seed.into();
        }
        match self.flavor {
            Flavor::OpenAi => {
                body["method"] = serde_json::json!({
                    "type": "supervised",
                    "supervised": { "hyperparameters": {
                        "n_epochs": serde_json::to_value(h.epochs).unwrap_or_default(),
                        "batch_size": serde_json::to_value(h.batch_size).unwrap_or_default(),
                        "learning_rate_multiplier": lr(h.learning_rate),
                    }},
                });
                let mut metadata: serde_json::Map<String, serde_json::Value> =
                    spec.metadata.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
                metadata.insert(REQUEST_ID_KEY.into(), request_id.into());
                body["metadata"] = metadata.into();
            }
            Flavor::Azure => {
                // The 2024-10-21 API takes numbers only: leave out what is auto.
                let mut hyper = serde_json::Map::new();
                if let Some(e) = h.epochs.value() {
                    hyper.insert("n_epochs".into(), e.into());
                }
                if let Some(b) = h.batch_size.value() {
                    hyper.insert("batch_size".into(), b.into());
                }
                if h.learning_rate.value().is_some() {
                    hyper.insert("learning_rate_multiplier".into(), lr(h.learning_rate));
                }
                if !hyper.is_empty() {
                    body["hyperparameters"] = hyper.into();
                }
            }
        }
        body
    }

    /// Creates the job, retrying without ever creating a second one: before
    /// each retry it looks for a job the lost attempt may have created
    /// (OpenAI: by the request id in the metadata; Azure, which keeps no
    /// metadata: by model, files, suffix and seed, created since the first
    /// attempt).
    pub(crate) async fn create_job(
        &self,
        spec: &JobSpec,
        training: &str,
        validation: Option<&str>,
    ) -> Result<WireJob> {
        let request_id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let body = self.create_body(spec, training, validation, &request_id);
        let since = Utc::now().timestamp() - 300;
        self.api
            .retrying("POST /fine_tuning/jobs", |attempt| {
                let body = &body;
                let request_id = &request_id;
                async move {
                    if attempt > 0
                        && let Some(found) = self
                            .find_created(spec, training, validation, request_id, since)
                            .await
                            .map_err(Failure::from)?
                    {
                        tracing::info!(job = %found.id, "a lost create had made the job; using it");
                        return Ok(found);
                    }
                    self.api.try_json(Method::POST, "/fine_tuning/jobs", &[], Some(body)).await
                }
            })
            .await
    }

    async fn find_created(
        &self,
        spec: &JobSpec,
        training: &str,
        validation: Option<&str>,
        request_id: &str,
        since: i64,
    ) -> Result<Option<WireJob>> {
        match self.flavor {
            Flavor::OpenAi => {
                let query = [
                    (format!("metadata[{REQUEST_ID_KEY}]"), request_id.to_owned()),
                    ("limit".into(), "10".into()),
                ];
                let query: Vec<(&str, String)> =
                    query.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                let list: WireList<WireJob> =
                    self.api.json(Method::GET, "/fine_tuning/jobs", &query, None).await?;
                Ok(list.data.into_iter().find(|j| {
                    j.metadata.as_ref().and_then(|m| m.get(REQUEST_ID_KEY)).map(String::as_str)
                        == Some(request_id)
                }))
            }
            Flavor::Azure => {
                let query = [("limit", "100".to_owned())];
                let list: WireList<WireJob> =
                    self.api.json(Method::GET, "/fine_tuning/jobs", &query, None).await?;
                Ok(list.data.into_iter().find(|j| {
                    j.model.as_deref() == Some(spec.base_model.as_str())
                        && j.training_file.as_deref() == Some(training)
                        && j.validation_file.as_deref() == validation
                        && j.suffix.as_deref().is_none_or(|s| {
                            Some(s) == spec.suffix.as_deref()
                                || spec.suffix.as_deref().is_some_and(|want| s.contains(want))
                        })
                        && (spec.seed.is_none() || j.seed == spec.seed.map(|s| s as i64))
                        && j.created_at.is_none_or(|t| t >= since)
                }))
            }
        }
    }

    pub(crate) async fn retrieve(&self, id: &JobId) -> Result<WireJob> {
        let path = format!("/fine_tuning/jobs/{}", checked_id("job id", id.as_str())?);
        self.api.json(Method::GET, &path, &[], None).await
    }

    /// A job in core terms. A running job's progress comes from its newest
    /// metrics event; a succeeded job's model carries its loss curve.
    pub(crate) async fn to_job(&self, wire: WireJob) -> Result<Job> {
        let id = JobId::new(wire.id.clone());
        let state = match wire.status.as_deref().unwrap_or("unknown") {
            "succeeded" => {
                let model = self.model(&wire).await?;
                JobState::Succeeded { model: Box::new(model) }
            }
            "failed" => {
                let error = wire.error.clone().unwrap_or_default();
                let mut reason = error.message.unwrap_or_else(|| "the job failed".into());
                if let Some(param) = error.param {
                    reason.push_str(&format!(" (param `{param}`)"));
                }
                JobState::Failed { reason, code: error.code }
            }
            "running" => JobState::Running { progress: self.progress(&id).await? },
            other => map_status(other).unwrap_or(JobState::Unknown { name: other.to_owned() }),
        };
        Ok(Job {
            id,
            provider: self.name().to_owned(),
            base_model: wire.model.clone().unwrap_or_default(),
            state,
            created_at: time(wire.created_at).unwrap_or_else(Utc::now),
            metadata: wire.metadata.clone().unwrap_or_default(),
        })
    }

    async fn progress(&self, id: &JobId) -> Result<Progress> {
        let page = self.events_page(id, None, 20).await?;
        let newest = page
            .items
            .iter()
            .filter(|e| e.kind == "metrics")
            .filter_map(|e| e.data.as_ref().and_then(point_from_data))
            .max_by_key(|(p, _)| p.step);
        Ok(match newest {
            Some((point, total)) => {
                Progress { step: Some(point.step), total_steps: total, epoch: point.epoch }
            }
            None => Progress::default(),
        })
    }

    async fn model(&self, wire: &WireJob) -> Result<FineTunedModel> {
        let model_id =
            wire.fine_tuned_model.clone().filter(|m| !m.is_empty()).ok_or_else(|| {
                Error::Provider {
                    status: None,
                    code: Some("no_model".into()),
                    message: format!("job {} succeeded without a fine_tuned_model", wire.id),
                    param: None,
                }
            })?;
        let mut metadata = BTreeMap::new();
        if let Some(files) = &wire.result_files {
            metadata.insert("result_files".into(), files.join(","));
        }
        if let Some(t) = wire.trained_tokens {
            metadata.insert("trained_tokens".into(), t.to_string());
        }
        if let Some(f) = &wire.training_file {
            metadata.insert("training_file".into(), f.clone());
        }
        if let Some(f) = &wire.validation_file {
            metadata.insert("validation_file".into(), f.clone());
        }
        if let Some(t) = wire.estimated_finish {
            metadata.insert("estimated_finish".into(), t.to_string());
        }
        if self.flavor == Flavor::Azure {
            metadata.insert(
                "deployment".into(),
                "required: deploy this model before calling it (billed while deployed)".into(),
            );
        }
        Ok(FineTunedModel {
            provider: self.name().to_owned(),
            model_id: model_id.clone(),
            base_model: wire.model.clone().unwrap_or_default(),
            job_id: Some(JobId::new(wire.id.clone())),
            created_at: time(wire.finished_at).or(time(wire.created_at)).unwrap_or_else(Utc::now),
            requires_deployment: self.flavor == Flavor::Azure,
            artifacts: ModelArtifacts::Remote { id: model_id },
            loss_curve: self.curve(wire).await?,
            metadata,
        })
    }

    /// The loss curve: metrics events, completed by the result file of a
    /// succeeded job (the file is authoritative where both have a step). A
    /// result file that is gone or unreadable is an error only when the
    /// events tell nothing either.
    pub(crate) async fn curve(&self, wire: &WireJob) -> Result<LossCurve> {
        let id = JobId::new(wire.id.clone());
        let mut curve = curve_from_events(&self.events(&id).await?);
        let result_file = wire.result_files.as_ref().and_then(|f| f.first());
        if let (Some("succeeded"), Some(file)) = (wire.status.as_deref(), result_file) {
            let path = format!("/files/{}/content", checked_id("file id", file)?);
            let parsed = match self.api.bytes(&path).await {
                Ok(content) => curve_from_result_csv(file, &content),
                Err(e) => Err(e),
            };
            match parsed {
                Ok(from_file) => {
                    for p in from_file.points() {
                        curve.upsert(*p);
                    }
                }
                Err(e) if !curve.is_empty() => {
                    tracing::warn!(job = %id, file, error = %e, "result file unusable; the loss curve comes from the events");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(curve)
    }

    pub(crate) async fn events_page(
        &self,
        id: &JobId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<JobEvent>> {
        let path = format!("/fine_tuning/jobs/{}/events", checked_id("job id", id.as_str())?);
        let mut query = vec![("limit", limit.to_string())];
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        let list: WireList<WireEvent> = self.api.json(Method::GET, &path, &query, None).await?;
        let items: Vec<JobEvent> = list.data.into_iter().map(JobEvent::from).collect();
        let next = match (list.has_more, items.last()) {
            (Some(true), Some(last)) if !last.id.is_empty() => Some(last.id.clone()),
            _ => None,
        };
        Ok(Page { items, next })
    }

    /// Every event, newest first, following the pages (and stopping if a
    /// server repeats a cursor).
    pub(crate) async fn events(&self, id: &JobId) -> Result<Vec<JobEvent>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let page = self.events_page(id, after.as_deref(), 100).await?;
            all.extend(page.items);
            match page.next {
                Some(next) if seen.insert(next.clone()) => after = Some(next),
                _ => break,
            }
        }
        Ok(all)
    }

    pub(crate) async fn checkpoints(&self, id: &JobId) -> Result<Vec<Checkpoint>> {
        let path = format!("/fine_tuning/jobs/{}/checkpoints", checked_id("job id", id.as_str())?);
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut query = vec![("limit", "100".to_owned())];
            if let Some(a) = &after {
                query.push(("after", a.clone()));
            }
            let list: WireList<WireCheckpoint> =
                self.api.json(Method::GET, &path, &query, None).await?;
            let last = list.data.last().map(|c| c.id.clone());
            all.extend(list.data.into_iter().map(|c| {
                Checkpoint {
                    id: c.id,
                    created_at: time(c.created_at),
                    model_id: c.fine_tuned_model_checkpoint,
                    step: c
                        .step_number
                        .map(|s| s.max(0) as u64)
                        .or_else(|| c.metrics.get("step").and_then(serde_json::Value::as_u64))
                        .unwrap_or(0),
                    metrics: c
                        .metrics
                        .into_iter()
                        .filter_map(|(k, v)| v.as_f64().map(|v| (k, v)))
                        .collect(),
                }
            }));
            match (list.has_more, last) {
                (Some(true), Some(last)) if !last.is_empty() && seen.insert(last.clone()) => {
                    after = Some(last)
                }
                _ => break,
            }
        }
        Ok(all)
    }

    pub(crate) async fn list(&self, query: &ListJobs) -> Result<Page<Job>> {
        let mut q = vec![("limit", query.limit.unwrap_or(20).clamp(1, 100).to_string())];
        if let Some(after) = &query.after {
            q.push(("after", after.clone()));
        }
        let list: WireList<WireJob> =
            self.api.json(Method::GET, "/fine_tuning/jobs", &q, None).await?;
        let next = match (list.has_more, list.data.last()) {
            (Some(true), Some(last))
                if !last.id.is_empty() && query.after.as_deref() != Some(&last.id) =>
            {
                Some(last.id.clone())
            }
            _ => None,
        };
        let mut items = Vec::with_capacity(list.data.len());
        for wire in list.data {
            items.push(self.to_job_light(wire));
        }
        Ok(Page { items, next })
    }

    /// A job without the extra requests (progress, loss curve) that `to_job`
    /// makes: what listings show. A succeeded job's model has no curve here.
    fn to_job_light(&self, wire: WireJob) -> Job {
        let state = match wire.status.as_deref().unwrap_or("unknown") {
            "succeeded" => match wire.fine_tuned_model.clone().filter(|m| !m.is_empty()) {
                Some(model_id) => JobState::Succeeded {
                    model: Box::new(FineTunedModel {
                        provider: self.name().to_owned(),
                        model_id: model_id.clone(),
                        base_model: wire.model.clone().unwrap_or_default(),
                        job_id: Some(JobId::new(wire.id.clone())),
                        created_at: time(wire.finished_at)
                            .or(time(wire.created_at))
                            .unwrap_or_else(Utc::now),
                        requires_deployment: self.flavor == Flavor::Azure,
                        artifacts: ModelArtifacts::Remote { id: model_id },
                        loss_curve: LossCurve::new(),
                        metadata: BTreeMap::new(),
                    }),
                },
                None => JobState::Unknown { name: "succeeded".into() },
            },
            "failed" => {
                let error = wire.error.clone().unwrap_or_default();
                JobState::Failed {
                    reason: error.message.unwrap_or_else(|| "the job failed".into()),
                    code: error.code,
                }
            }
            other => map_status(other).unwrap_or(JobState::Unknown { name: other.to_owned() }),
        };
        Job {
            id: JobId::new(wire.id),
            provider: self.name().to_owned(),
            base_model: wire.model.unwrap_or_default(),
            state,
            created_at: time(wire.created_at).unwrap_or_else(Utc::now),
            metadata: wire.metadata.unwrap_or_default(),
        }
    }

    /// `POST /fine_tuning/jobs/{id}/{action}` (cancel, pause, resume).
    pub(crate) async fn action(&self, id: &JobId, action: &str) -> Result<WireJob> {
        let path = format!("/fine_tuning/jobs/{}/{action}", checked_id("job id", id.as_str())?);
        self.api.json(Method::POST, &path, &[], None).await
    }

    /// Asks a job to stop; a job the answer shows cancelled already is
    /// `Cancelled`, else whatever state it reports (usually `Cancelling`).
    pub(crate) async fn cancel(&self, id: &JobId) -> Result<JobState> {
        let wire = self.action(id, "cancel").await?;
        Ok(match wire.status.as_deref() {
            Some("cancelled") => JobState::Cancelled,
            Some("running") => JobState::Cancelling,
            _ => self.to_job_light(wire).state,
        })
    }

    /// A chat completion: OpenAI by model id, Azure by deployment name.
    pub(crate) async fn chat(
        &self,
        model_or_deployment: &str,
        messages: &[ChatMessage],
        max_tokens: Option<u32>,
    ) -> Result<ChatCompletion> {
        #[derive(Deserialize)]
        struct Choice {
            #[serde(default)]
            message: Option<Message>,
            #[serde(default)]
            finish_reason: Option<String>,
        }
        #[derive(Deserialize)]
        struct Message {
            #[serde(default)]
            content: Option<String>,
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            id: String,
            #[serde(default)]
            model: String,
            #[serde(default)]
            choices: Vec<Choice>,
        }
        let (path, mut body) = match self.flavor {
            Flavor::OpenAi => (
                "/chat/completions".to_owned(),
                serde_json::json!({ "model": model_or_deployment, "messages": messages }),
            ),
            Flavor::Azure => (
                format!(
                    "/deployments/{}/chat/completions",
                    checked_id("deployment", model_or_deployment)?
                ),
                serde_json::json!({ "messages": messages }),
            ),
        };
        if let Some(n) = max_tokens {
            let key = match self.flavor {
                Flavor::OpenAi => "max_completion_tokens",
                Flavor::Azure => "max_tokens",
            };
            body[key] = n.into();
        }
        let answer: Answer = self.api.json(Method::POST, &path, &[], Some(&body)).await?;
        let first = answer.choices.into_iter().next();
        Ok(ChatCompletion {
            id: answer.id,
            model: answer.model,
            content: first
                .as_ref()
                .and_then(|c| c.message.as_ref())
                .and_then(|m| m.content.clone())
                .unwrap_or_default(),
            finish_reason: first.and_then(|c| c.finish_reason),
        })
    }
}

/// SHA-256 and size of a file, read in 64 KiB pieces.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_csv_with_empty_validation_cells() {
        let csv = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n\
                   1,2.5,0.1,,\n2,2.0,0.2,2.2,0.15\n3,1.5,0.3,,\n";
        let curve = curve_from_result_csv("file-r", csv.as_bytes()).unwrap();
        assert_eq!(curve.train_series(), vec![(1, 2.5), (2, 2.0), (3, 1.5)]);
        assert_eq!(curve.validation_series(), vec![(2, 2.2)]);
        assert_eq!(curve.points()[1].validation_token_accuracy, Some(0.15));
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(csv);
        assert_eq!(curve_from_result_csv("file-r", encoded.as_bytes()).unwrap(), curve);
    }

    #[test]
    fn result_csv_errors_name_file_line_and_column() {
        let csv = "step,train_loss\n1,2.5\n2,oops\n";
        let err = curve_from_result_csv("file-r", csv.as_bytes()).unwrap_err().to_string();
        assert!(
            err.contains("file-r") && err.contains("line 3") && err.contains("train_loss"),
            "{err}"
        );
        let err = curve_from_result_csv("file-r", b"@@@ not csv").unwrap_err().to_string();
        assert!(err.contains("file-r"), "{err}");
    }

    #[test]
    fn statuses_of_both_apis() {
        assert_eq!(map_status("validating_files"), Some(JobState::Validating));
        assert_eq!(map_status("pending"), Some(JobState::Queued));
        assert_eq!(map_status("created"), Some(JobState::Queued));
        assert_eq!(map_status("paused"), Some(JobState::Paused));
        assert_eq!(map_status("cancelled"), Some(JobState::Cancelled));
        assert_eq!(map_status("something_new"), None);
    }

    #[test]
    fn events_make_a_curve() {
        let event = |step: u64, data: serde_json::Value| JobEvent {
            id: format!("e{step}"),
            created_at: None,
            level: "info".into(),
            message: String::new(),
            kind: "metrics".into(),
            data: Some(data),
        };
        let events = vec![
            event(
                2,
                serde_json::json!({"step": 2, "train_loss": 1.0, "valid_loss": 1.5, "total_steps": 4}),
            ),
            event(1, serde_json::json!({"step": 1, "train_loss": 2.0, "total_steps": 4})),
        ];
        let curve = curve_from_events(&events);
        assert_eq!(curve.train_series(), vec![(1, 2.0), (2, 1.0)]);
        assert_eq!(curve.validation_series(), vec![(2, 1.5)]);
    }

    #[test]
    fn ids_cannot_change_the_path() {
        assert!(checked_id("job id", "ftjob-abc_1.2:3").is_ok());
        for bad in ["", "../files", "a/b", "a?b=c", "a b", "a#b"] {
            assert!(checked_id("job id", bad).is_err(), "{bad}");
        }
    }
}
