//! The OpenAI fine-tuning protocol, spoken by OpenAI and Azure OpenAI: the
//! wire format (`wire`), events, checkpoints and uploaded files
//! (`types`), loss curves (`curve`), and [`FineTuningClient`], which runs
//! every flow (upload with reuse, create without duplicates, follow, cancel,
//! list, chat) over the shared HTTP layer; [`CompletionsChat`] is a model
//! answering through its chat completions.
//!
//! What differs between the hosts lives in one `Host` impl per host
//! (`openai::OpenAi`, `azure::Azure`): the provider name, whether models
//! need a deployment, the host's own spec rules, the create body, how a
//! lost create is found again, and the chat request. A third
//! OpenAI-compatible host is one more impl.

pub(crate) mod curve;
pub(crate) mod types;
pub(crate) mod wire;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use finetune_core::pagination::{RepeatedCursor, collect_pages};
use finetune_core::{
    Capabilities, ChatModel, ChatRequest, ChatResponse, Error, FineTunedModel, FinishReason, Job,
    JobId, JobSpec, JobState, LearningRate, LearningRateKind, ListJobs, Location, LossCurve,
    ModelArtifacts, Page, Progress, Result, Setting, Usage,
};
use finetune_data::{ObjectStores, OutputFormat};
use reqwest::Method;
use serde::Deserialize;

use self::curve::{curve_from_events, curve_from_result_csv, point_from_data};
use self::types::{JobCheckpoint, JobEvent, UploadedFile};
use self::wire::{WireCheckpoint, WireEvent, WireFile, WireJob, WireList, map_status};
use crate::http::{Api, Failure};
use crate::time::from_unix_seconds;

/// The fewest training rows OpenAI and Azure OpenAI accept.
pub const MIN_TRAINING_ROWS: u64 = 10;

/// The create request whose job a lost answer may have made. Each host
/// reads its own fields (OpenAI the request id, Azure the rest).
#[cfg_attr(not(all(feature = "openai", feature = "azure")), allow(dead_code))]
pub(crate) struct CreateRequest<'a> {
    pub(crate) spec: &'a JobSpec,
    pub(crate) training: &'a str,
    pub(crate) validation: Option<&'a str>,
    /// The id sent in the job's metadata (where the host keeps metadata).
    pub(crate) request_id: &'a str,
    /// Unix seconds a little before the first attempt.
    pub(crate) since: i64,
}

/// What one host of the OpenAI fine-tuning API does its own way.
pub(crate) trait Host: Send + Sync + fmt::Debug + 'static {
    /// The provider's name in jobs and models (`openai`, `azure_openai`).
    fn name(&self) -> &'static str;

    /// Which provider it is, for its data rules.
    fn kind(&self) -> finetune_core::ProviderKind;

    /// Whether the host serves fine-tuned models only through billed
    /// deployments.
    fn requires_deployment(&self) -> bool;

    /// The host's own rules for a spec (suffix, metadata), beyond the
    /// protocol's; no dataset is read.
    fn check_spec(&self, spec: &JobSpec) -> Result<()>;

    /// The query listing uploaded fine-tune files.
    fn files_query(&self) -> Vec<(&'static str, String)>;

    /// Adds the hyperparameters (and the request id, where the host keeps
    /// metadata) to a create body holding model, files, suffix and seed.
    fn complete_create_body(&self, body: &mut serde_json::Value, spec: &JobSpec, request_id: &str);

    /// The listing query that shows the job a lost create may have made.
    fn created_job_query(&self, request: &CreateRequest<'_>) -> Vec<(String, String)>;

    /// Whether `job` is the one `request` made.
    fn is_created_job(&self, job: &WireJob, request: &CreateRequest<'_>) -> bool;

    /// The path and body of a chat completion from `target` (a model id,
    /// or a deployment where the host serves through deployments).
    fn chat_request(
        &self,
        target: &str,
        request: &ChatRequest,
    ) -> Result<(String, serde_json::Value)>;
}

/// The chat-completions body both hosts share: messages, sampling, stop
/// sequences and seed. The host adds the model or the path, and its name
/// for the token limit.
pub(crate) fn chat_body(request: &ChatRequest) -> serde_json::Value {
    let mut body = serde_json::json!({ "messages": request.messages });
    if let Some(t) = request.temperature {
        body["temperature"] = t.into();
    }
    if let Some(p) = request.top_p {
        body["top_p"] = p.into();
    }
    if !request.stop.is_empty() {
        body["stop"] = request.stop.clone().into();
    }
    if let Some(seed) = request.seed {
        body["seed"] = seed.into();
    }
    body
}

/// A learning rate as the create body takes it: the number, or `"auto"`.
pub(crate) fn learning_rate_json(setting: Setting<LearningRate>) -> serde_json::Value {
    match setting {
        Setting::Value(LearningRate::Multiplier(v) | LearningRate::Absolute(v)) => v.into(),
        Setting::Auto => "auto".into(),
    }
}

/// Ids go into URL paths: refuse anything that would change the path.
pub(crate) fn checked_id<'a>(what: &str, id: &'a str) -> Result<&'a str> {
    let ok = !id.is_empty()
        && id.len() <= 256
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(id)
    } else {
        Err(Error::invalid_at(Location::column(what), format!("`{id}` is not a valid {what}")))
    }
}

/// Runs every flow of the OpenAI fine-tuning API against one host. The
/// providers hold one and hand out its shared methods (uploads, events,
/// checkpoints, retry and upload counts) through `Deref`.
pub struct FineTuningClient<H> {
    pub(crate) api: Api,
    pub(crate) host: H,
    pub(crate) stores: ObjectStores,
    /// Files uploaded by this client, by content hash.
    uploaded: tokio::sync::Mutex<HashMap<String, UploadedFile>>,
    uploads: AtomicU64,
    /// How long to wait for the host to finish importing an uploaded file.
    pub(crate) file_import_timeout: Duration,
}

#[allow(private_bounds)]
impl<H: Host> fmt::Debug for FineTuningClient<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FineTuningClient")
            .field("host", &self.host)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

// `Host` stays crate-private: hosts are ours; users call the methods.
#[allow(private_bounds)]
impl<H: Host> FineTuningClient<H> {
    pub(crate) fn new(api: Api, host: H) -> Self {
        Self {
            api,
            host,
            stores: ObjectStores::new(),
            uploaded: tokio::sync::Mutex::new(HashMap::new()),
            uploads: AtomicU64::new(0),
            file_import_timeout: Duration::from_secs(600),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.host.name()
    }

    pub(crate) fn capabilities(&self) -> Capabilities {
        Capabilities::full(LearningRateKind::Multiplier)
            .with_requires_deployment(self.host.requires_deployment())
            .with_min_training_rows(MIN_TRAINING_ROWS)
    }

    /// Validates a dataset, writes it as chat JSONL and uploads it (or
    /// reuses an identical file already uploaded).
    pub async fn upload(&self, dataset: &finetune_core::DatasetSource) -> Result<UploadedFile> {
        self.prepare_file(dataset, "training", self.data_rules("")).await
    }

    /// The data rules for `base_model` on this host.
    pub(crate) fn data_rules(&self, base_model: &str) -> finetune_core::DataRules {
        finetune_core::DataRules::builtin(&self.host.kind(), base_model)
    }

    /// Retries made since this provider was built.
    pub fn retries(&self) -> u64 {
        self.api.retries()
    }

    /// The API root requests go to.
    pub fn base_url(&self) -> &str {
        self.api.base()
    }

    /// Files this provider uploaded (reused ones not counted).
    pub fn uploads(&self) -> u64 {
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
        if let Some(seed) = spec.seed
            && seed > i32::MAX as u64
        {
            return Err(Error::invalid_at(
                Location::column("seed"),
                format!("must be at most {}, got {seed}", i32::MAX),
            ));
        }
        self.host.check_spec(spec)?;
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
        rules: finetune_core::DataRules,
    ) -> Result<UploadedFile> {
        let prepared = crate::prepare::convert_for_upload(
            &self.stores,
            source,
            role,
            OutputFormat::OpenAiChat,
            rules,
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
        let query = self.host.files_query();
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
        self.host.complete_create_body(&mut body, spec, request_id);
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
                    let request = CreateRequest { spec, training, validation, request_id, since };
                    if attempt > 0
                        && let Some(found) =
                            self.find_created(&request).await.map_err(Failure::from)?
                    {
                        tracing::info!(job = %found.id, "a lost create had made the job; using it");
                        return Ok(found);
                    }
                    self.api.try_json(Method::POST, "/fine_tuning/jobs", &[], Some(body)).await
                }
            })
            .await
    }

    async fn find_created(&self, request: &CreateRequest<'_>) -> Result<Option<WireJob>> {
        let query = self.host.created_job_query(request);
        let query: Vec<(&str, String)> =
            query.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let list: WireList<WireJob> =
            self.api.json(Method::GET, "/fine_tuning/jobs", &query, None).await?;
        Ok(list.data.into_iter().find(|job| self.host.is_created_job(job, request)))
    }

    /// Validates the spec and the datasets (an invalid dataset is refused
    /// before anything is uploaded), uploads each dataset (or reuses an
    /// identical file) and creates the job.
    pub(crate) async fn submit(&self, spec: &JobSpec) -> Result<Job> {
        self.validate(spec)?;
        let rules = self.data_rules(&spec.base_model);
        let training = self.prepare_file(&spec.training, "training", rules.clone()).await?;
        let validation = match &spec.validation {
            Some(v) => Some(self.prepare_file(v, "validation", rules).await?),
            None => None,
        };
        let wire =
            self.create_job(spec, &training.id, validation.as_ref().map(|v| v.id.as_str())).await?;
        tracing::info!(job = %wire.id, provider = self.name(), "fine-tuning job created");
        self.to_job(wire).await
    }

    /// A job as it stands.
    pub(crate) async fn job(&self, id: &JobId) -> Result<Job> {
        let wire = self.retrieve(id).await?;
        self.to_job(wire).await
    }

    /// A job's loss curve so far.
    pub(crate) async fn metrics(&self, id: &JobId) -> Result<LossCurve> {
        let wire = self.retrieve(id).await?;
        self.curve(&wire).await
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
            created_at: from_unix_seconds(wire.created_at).unwrap_or_else(Utc::now),
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
            metadata.insert(finetune_core::TRAINED_TOKENS_KEY.into(), t.to_string());
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
        if let Some(h) = wire.resolved_hyperparameters() {
            metadata.insert(finetune_core::HYPERPARAMETERS_KEY.into(), h.to_string());
        }
        if self.host.requires_deployment() {
            metadata.insert(
                "deployment".into(),
                "required: deploy this model before calling it (billed while deployed)".into(),
            );
        }
        let curve = self.curve(wire).await?;
        Ok(self.fine_tuned_model(wire, model_id, curve, metadata))
    }

    /// The model a succeeded job made, called by `model_id`.
    fn fine_tuned_model(
        &self,
        wire: &WireJob,
        model_id: String,
        loss_curve: LossCurve,
        metadata: BTreeMap<String, String>,
    ) -> FineTunedModel {
        FineTunedModel {
            provider: self.name().to_owned(),
            model_id: model_id.clone(),
            base_model: wire.model.clone().unwrap_or_default(),
            job_id: Some(JobId::new(wire.id.clone())),
            created_at: from_unix_seconds(wire.finished_at)
                .or(from_unix_seconds(wire.created_at))
                .unwrap_or_else(Utc::now),
            requires_deployment: self.host.requires_deployment(),
            artifacts: ModelArtifacts::Remote { id: model_id },
            loss_curve,
            metadata,
        }
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

    /// One page of a job's events, newest first.
    pub async fn events_page(
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

    /// Every event of a job, newest first, following the pages (and
    /// stopping if a server repeats a cursor).
    pub async fn events(&self, id: &JobId) -> Result<Vec<JobEvent>> {
        collect_pages("events", 10_000, RepeatedCursor::Stop, |after| async move {
            self.events_page(id, after.as_deref(), 100).await
        })
        .await
    }

    /// Every checkpoint a job kept, following the pages.
    pub async fn checkpoints(&self, id: &JobId) -> Result<Vec<JobCheckpoint>> {
        let path = format!("/fine_tuning/jobs/{}/checkpoints", checked_id("job id", id.as_str())?);
        collect_pages("checkpoints", 1000, RepeatedCursor::Stop, |after| {
            let path = &path;
            async move {
                let mut query = vec![("limit", "100".to_owned())];
                if let Some(a) = after {
                    query.push(("after", a));
                }
                let list: WireList<WireCheckpoint> =
                    self.api.json(Method::GET, path, &query, None).await?;
                let next = match (list.has_more, list.data.last()) {
                    (Some(true), Some(last)) if !last.id.is_empty() => Some(last.id.clone()),
                    _ => None,
                };
                Ok(Page { items: list.data.into_iter().map(JobCheckpoint::from).collect(), next })
            }
        })
        .await
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
                    model: Box::new(self.fine_tuned_model(
                        &wire,
                        model_id,
                        LossCurve::new(),
                        BTreeMap::new(),
                    )),
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
            created_at: from_unix_seconds(wire.created_at).unwrap_or_else(Utc::now),
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

    /// A chat completion from `target`: a model id, or a deployment where
    /// the host serves through deployments.
    pub(crate) async fn chat(&self, target: &str, request: &ChatRequest) -> Result<ChatResponse> {
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
        #[derive(Deserialize, Default)]
        struct WireUsage {
            #[serde(default)]
            prompt_tokens: u64,
            #[serde(default)]
            completion_tokens: u64,
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            model: String,
            #[serde(default)]
            choices: Vec<Choice>,
            #[serde(default)]
            usage: Option<WireUsage>,
        }
        request.check()?;
        let (path, body) = self.host.chat_request(target, request)?;
        let answer: Answer = self.api.json(Method::POST, &path, &[], Some(&body)).await?;
        let first = answer.choices.into_iter().next();
        let usage = answer.usage.unwrap_or_default();
        Ok(ChatResponse {
            text: first
                .as_ref()
                .and_then(|c| c.message.as_ref())
                .and_then(|m| m.content.clone())
                .unwrap_or_default(),
            finish_reason: first
                .and_then(|c| c.finish_reason)
                .map_or(FinishReason::Stop, |r| FinishReason::from_backend(&r)),
            usage: Usage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            },
            model: if answer.model.is_empty() { target.to_owned() } else { answer.model },
        })
    }
}

/// A model answering through an OpenAI-compatible host's chat completions:
/// a fine-tuned OpenAI model by its id, or an Azure OpenAI deployment.
pub struct CompletionsChat<P> {
    provider: std::sync::Arc<P>,
    target: String,
}

impl<P> CompletionsChat<P> {
    /// Chats with `target` through `provider`'s client.
    pub fn new(provider: std::sync::Arc<P>, target: impl Into<String>) -> Self {
        Self { provider, target: target.into() }
    }
}

impl<P> fmt::Debug for CompletionsChat<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionsChat").field("target", &self.target).finish_non_exhaustive()
    }
}

#[allow(private_bounds)]
#[async_trait::async_trait]
impl<P, H> ChatModel for CompletionsChat<P>
where
    P: std::ops::Deref<Target = FineTuningClient<H>> + Send + Sync + 'static,
    H: Host,
{
    fn target(&self) -> &str {
        &self.target
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse> {
        self.provider.chat(&self.target, request).await
    }
}

impl From<WireCheckpoint> for JobCheckpoint {
    fn from(c: WireCheckpoint) -> Self {
        Self {
            id: c.id,
            created_at: from_unix_seconds(c.created_at),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_change_the_path() {
        assert!(checked_id("job id", "ftjob-abc_1.2:3").is_ok());
        for bad in ["", "../files", "a/b", "a?b=c", "a b", "a#b"] {
            assert!(checked_id("job id", bad).is_err(), "{bad}");
        }
    }
}
