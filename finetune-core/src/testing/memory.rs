//! An in-memory reference provider.
//!
//! It shows the shape a provider takes and tests the conformance suite
//! itself: each [`Fault`] breaks one promise, and the suite must notice.
//! Jobs advance one step each time they are read, so tests are fast and
//! deterministic without sleeping.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;

use super::ConformanceHarness;
use crate::chat::{ChatModel, ChatRequest, ChatResponse, FinishReason, Role, Usage};
use crate::connection::{Connection, ConnectionSettings, ProviderKind};
use crate::error::{Error, Location, Result};
use crate::factory::{EnabledConnection, ProviderFactory, expect_kind};
use crate::job::{Job, JobId, JobSpec, JobState, ListJobs, Page, Progress};
use crate::metrics::{LossCurve, LossPoint};
use crate::model::{FineTunedModel, ModelArtifacts};
use crate::provider::{Capabilities, FineTuneProvider, LearningRateKind};
use crate::{DatasetSource, Setting};

/// A broken behaviour the [`MemoryProvider`] can be told to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Jobs run forever.
    NeverFinishes,
    /// Jobs succeed with an empty loss curve.
    EmptyLossCurve,
    /// Cancel is acknowledged but the job runs on to success.
    IgnoresCancel,
    /// Data is uploaded before the spec is checked.
    UploadsBeforeValidating,
    /// Jobs jump straight to succeeded, with no observable progress.
    NoProgress,
    /// Validation loss is never reported.
    DropsValidationLoss,
}

#[derive(Debug)]
struct MemJob {
    spec: JobSpec,
    created_at: chrono::DateTime<Utc>,
    seq: u64,
    /// Reads so far: drives the job forward.
    ticks: u64,
    total_steps: u64,
    curve: LossCurve,
    cancel_requested: bool,
    state: JobState,
}

/// A stateful in-memory provider.
#[derive(Debug)]
pub struct MemoryProvider {
    base_models: Vec<String>,
    steps_per_epoch: u64,
    fault: Option<Fault>,
    jobs: Mutex<BTreeMap<JobId, MemJob>>,
    next_id: AtomicU64,
    uploads: AtomicU64,
}

impl Default for MemoryProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryProvider {
    /// Base models `memory-small` and `memory-large`, 4 steps per epoch.
    pub fn new() -> Self {
        Self {
            base_models: vec!["memory-small".into(), "memory-large".into()],
            steps_per_epoch: 4,
            fault: None,
            jobs: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            uploads: AtomicU64::new(0),
        }
    }

    /// Gives the provider a broken behaviour.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// Datasets "uploaded" so far.
    pub fn uploads(&self) -> u64 {
        self.uploads.load(Ordering::SeqCst)
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<JobId, MemJob>> {
        // A panic elsewhere while holding the lock leaves plain data behind;
        // keep serving it.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, spec: &JobSpec) -> Result<()> {
        spec.validate_common()?;
        self.capabilities().check(spec)?;
        if !self.base_models.contains(&spec.base_model) {
            return Err(Error::invalid_at(
                Location::column("base_model"),
                format!(
                    "unknown base model `{}`; this provider offers {}",
                    spec.base_model,
                    self.base_models.join(", ")
                ),
            ));
        }
        if let Some(epochs) = spec.hyperparameters.epochs.value()
            && epochs > 10
        {
            return Err(Error::invalid_at(
                Location::column("hyperparameters.epochs"),
                "at most 10 epochs",
            ));
        }
        if let Some(key) = spec.extras.keys().next() {
            return Err(Error::invalid_at(
                Location::column(format!("extras.{key}")),
                "this provider takes no extras",
            ));
        }
        Ok(())
    }

    fn advance(&self, job: &mut MemJob, id: &JobId) {
        if job.state.is_terminal() {
            return;
        }
        job.ticks += 1;
        if job.cancel_requested && self.fault != Some(Fault::IgnoresCancel) {
            job.state = JobState::Cancelled;
            return;
        }
        let seed = job.spec.seed.unwrap_or(0);
        job.state = match (job.ticks, self.fault) {
            (_, Some(Fault::NoProgress)) => {
                for step in 1..=job.total_steps {
                    job.curve.upsert(LossPoint::train(step, loss_at(step, seed)));
                }
                succeeded(self, id, job)
            }
            (1, _) => JobState::Validating,
            (t, fault) => {
                let step = t - 1;
                if step > job.total_steps && fault != Some(Fault::NeverFinishes) {
                    succeeded(self, id, job)
                } else {
                    let step = step.min(job.total_steps);
                    let mut point = LossPoint {
                        epoch: Some(step as f64 / self.steps_per_epoch as f64),
                        learning_rate: Some(1e-4),
                        ..LossPoint::train(step, loss_at(step, seed))
                    };
                    if job.spec.validation.is_some()
                        && step % self.steps_per_epoch == 0
                        && fault != Some(Fault::DropsValidationLoss)
                    {
                        point.validation_loss = Some(loss_at(step, seed) * 1.1 + 0.05);
                    }
                    job.curve.upsert(point);
                    JobState::Running {
                        progress: Progress {
                            step: Some(step),
                            total_steps: Some(job.total_steps),
                            epoch: point.epoch,
                        },
                    }
                }
            }
        };
    }

    fn to_job(&self, id: &JobId, job: &MemJob) -> Job {
        Job {
            id: id.clone(),
            provider: self.name().to_owned(),
            base_model: job.spec.base_model.clone(),
            state: job.state.clone(),
            created_at: job.created_at,
            metadata: job.spec.metadata.clone(),
        }
    }
}

/// A smooth, decreasing loss with a little seeded wobble.
fn loss_at(step: u64, seed: u64) -> f64 {
    let wobble =
        ((step.wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f64 / 1000.0 - 0.5) * 0.02;
    2.0 * (-0.25 * step as f64).exp() + 0.3 + wobble
}

fn succeeded(provider: &MemoryProvider, id: &JobId, job: &MemJob) -> JobState {
    let curve = if provider.fault == Some(Fault::EmptyLossCurve) {
        LossCurve::new()
    } else {
        job.curve.clone()
    };
    let suffix = job.spec.suffix.as_deref().unwrap_or("ft");
    JobState::Succeeded {
        model: Box::new(FineTunedModel {
            provider: provider.name().to_owned(),
            model_id: format!("{}:{}:{}", job.spec.base_model, suffix, id),
            base_model: job.spec.base_model.clone(),
            job_id: Some(id.clone()),
            created_at: Utc::now(),
            requires_deployment: false,
            artifacts: ModelArtifacts::Remote { id: format!("memory/{id}") },
            loss_curve: curve,
            metadata: BTreeMap::new(),
        }),
    }
}

#[async_trait]
impl FineTuneProvider for MemoryProvider {
    fn name(&self) -> &str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full(LearningRateKind::Multiplier).with_min_training_rows(1)
    }

    async fn validate(&self, spec: &JobSpec) -> Result<()> {
        self.check(spec)
    }

    async fn submit(&self, spec: &JobSpec) -> Result<Job> {
        let datasets = 1 + u64::from(spec.validation.is_some());
        if self.fault == Some(Fault::UploadsBeforeValidating) {
            self.uploads.fetch_add(datasets, Ordering::SeqCst);
        }
        self.check(spec)?;
        if self.fault != Some(Fault::UploadsBeforeValidating) {
            self.uploads.fetch_add(datasets, Ordering::SeqCst);
        }
        let seq = self.next_id.fetch_add(1, Ordering::SeqCst);
        let id = JobId::new(format!("memjob-{seq:06}"));
        let epochs = u64::from(spec.hyperparameters.epochs.unwrap_or(2));
        let job = MemJob {
            spec: spec.clone(),
            created_at: Utc::now(),
            seq,
            ticks: 0,
            total_steps: epochs * self.steps_per_epoch,
            curve: LossCurve::new(),
            cancel_requested: false,
            state: JobState::Queued,
        };
        let out = self.to_job(&id, &job);
        self.jobs().insert(id, job);
        Ok(out)
    }

    async fn job(&self, id: &JobId) -> Result<Job> {
        let mut jobs = self.jobs();
        let job = jobs.get_mut(id).ok_or_else(|| Error::NotFound { what: format!("job {id}") })?;
        self.advance(job, id);
        Ok(self.to_job(id, job))
    }

    async fn metrics(&self, id: &JobId) -> Result<LossCurve> {
        let jobs = self.jobs();
        let job = jobs.get(id).ok_or_else(|| Error::NotFound { what: format!("job {id}") })?;
        Ok(match (&job.state, self.fault) {
            (_, Some(Fault::EmptyLossCurve)) => LossCurve::new(),
            _ => job.curve.clone(),
        })
    }

    async fn cancel(&self, id: &JobId) -> Result<JobState> {
        let mut jobs = self.jobs();
        let job = jobs.get_mut(id).ok_or_else(|| Error::NotFound { what: format!("job {id}") })?;
        if !job.state.is_terminal() {
            job.cancel_requested = true;
            job.state = JobState::Cancelling;
        }
        Ok(job.state.clone())
    }

    async fn list_jobs(&self, query: &ListJobs) -> Result<Page<Job>> {
        let jobs = self.jobs();
        let limit = query.limit.unwrap_or(20).max(1) as usize;
        let after_seq = match &query.after {
            Some(cursor) => {
                jobs.get(&JobId::new(cursor.clone())).map(|j| j.seq).ok_or_else(|| {
                    Error::invalid_at(
                        Location::column("after"),
                        format!("unknown cursor `{cursor}`"),
                    )
                })?
            }
            None => u64::MAX,
        };
        let mut newest_first: Vec<_> = jobs.iter().filter(|(_, j)| j.seq < after_seq).collect();
        newest_first.sort_by_key(|(_, j)| std::cmp::Reverse(j.seq));
        let more = newest_first.len() > limit;
        let items: Vec<Job> =
            newest_first.into_iter().take(limit).map(|(id, j)| self.to_job(id, j)).collect();
        let next = if more { items.last().map(|j| j.id.0.clone()) } else { None };
        Ok(Page { items, next })
    }
}

/// A [`ConformanceHarness`] over a [`MemoryProvider`].
#[derive(Debug, Default)]
pub struct MemoryHarness {
    /// The provider under test.
    pub provider: MemoryProvider,
}

impl MemoryHarness {
    /// A harness over a provider with `fault`.
    pub fn with_fault(fault: Fault) -> Self {
        Self { provider: MemoryProvider::new().with_fault(fault) }
    }
}

#[async_trait]
impl ConformanceHarness for MemoryHarness {
    fn provider(&self) -> &dyn FineTuneProvider {
        &self.provider
    }

    fn valid_spec(&self) -> JobSpec {
        let source = |s: &str| DatasetSource::new(s).expect("a literal, non-empty location");
        JobSpec::new("memory-small", source("memory://datasets/train.jsonl"))
            .with_validation(source("memory://datasets/valid.jsonl"))
            .with_suffix("conformance")
            .with_seed(42)
    }

    fn invalid_spec(&self) -> JobSpec {
        let mut spec = self.valid_spec();
        spec.hyperparameters.epochs = Setting::Value(1000);
        spec
    }

    async fn uploads(&self) -> u64 {
        self.provider.uploads()
    }

    fn poll_policy(&self) -> crate::PollPolicy {
        crate::PollPolicy::fixed(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(500),
        )
    }
}

/// The [`ProviderFactory`] of the [`MemoryProvider`]: connections of kind
/// `memory` (settings [`MemoryFactory::settings`]) all reach one shared
/// provider, as connections to one account reach one backend.
#[derive(Debug, Clone, Default)]
pub struct MemoryFactory {
    /// The backend every connection reaches.
    pub provider: Arc<MemoryProvider>,
}

impl MemoryFactory {
    /// The kind it serves.
    pub const KIND: &'static str = "memory";

    /// A factory over `provider`.
    pub fn new(provider: MemoryProvider) -> Self {
        Self { provider: Arc::new(provider) }
    }

    /// Connection settings of its kind.
    pub fn settings() -> ConnectionSettings {
        ConnectionSettings::Other {
            name: Self::KIND.to_owned(),
            options: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }
    }
}

#[async_trait]
impl ProviderFactory for MemoryFactory {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Other(Self::KIND.to_owned())
    }

    async fn connect(
        &self,
        connection: EnabledConnection<'_>,
    ) -> Result<Arc<dyn FineTuneProvider>> {
        expect_kind(&connection, &self.kind())?;
        Ok(Arc::clone(&self.provider) as Arc<dyn FineTuneProvider>)
    }

    async fn chat_model(
        &self,
        connection: &Connection,
        model: &FineTunedModel,
        _deployment: Option<&str>,
    ) -> Result<Arc<dyn ChatModel>> {
        expect_kind(connection, &self.kind())?;
        let trained = self.provider.jobs().values().any(|j| {
            matches!(&j.state, JobState::Succeeded { model: m } if m.model_id == model.model_id)
        });
        if !trained {
            return Err(Error::NotFound { what: format!("model {}", model.model_id) });
        }
        Ok(Arc::new(MemoryChatModel { model_id: model.model_id.clone() }))
    }
}

/// A fine-tuned memory model: it answers with the last user message
/// reversed word by word, counting words as tokens.
#[derive(Debug)]
pub struct MemoryChatModel {
    model_id: String,
}

#[async_trait]
impl ChatModel for MemoryChatModel {
    fn target(&self) -> &str {
        &self.model_id
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse> {
        request.check()?;
        let prompt_tokens: usize =
            request.messages.iter().map(|m| m.content.split_whitespace().count()).sum();
        let last = request.messages.iter().rev().find(|m| m.role == Role::User);
        let mut words: Vec<&str> =
            last.map(|m| m.content.split_whitespace().rev().collect()).unwrap_or_default();
        let max = request.max_tokens.map_or(usize::MAX, |n| n as usize);
        let finish_reason =
            if words.len() > max { FinishReason::Length } else { FinishReason::Stop };
        words.truncate(max);
        Ok(ChatResponse {
            text: words.join(" "),
            finish_reason,
            usage: Usage {
                prompt_tokens: prompt_tokens as u64,
                completion_tokens: words.len() as u64,
            },
            model: self.model_id.clone(),
        })
    }
}
