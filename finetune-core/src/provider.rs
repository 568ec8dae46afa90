//! The [`FineTuneProvider`] trait every backend implements, the
//! [`wait_for_job`] helper, and the [`ConnectionGate`] decorator.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::job::{Job, JobId, JobSpec, JobState, ListJobs, Page};
use crate::metrics::LossCurve;
use crate::rules::{DataRules, TokenCounter};

/// How the learning rate is expressed to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LearningRateKind {
    /// An absolute learning rate.
    Absolute,
    /// A multiplier of the provider's default.
    Multiplier,
}

/// What a provider can do, so applications can shape their forms and
/// refuse early.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Whether a validation dataset is accepted (and validation loss reported).
    pub validation_dataset: bool,
    /// Whether `epochs` may be set.
    pub epochs: bool,
    /// Whether `batch_size` may be set.
    pub batch_size: bool,
    /// How the learning rate may be set, if at all.
    pub learning_rate: Option<LearningRateKind>,
    /// Whether fine-tuned models must be deployed before use (and are billed
    /// while deployed).
    pub requires_deployment: bool,
    /// Whether a running job can be cancelled.
    pub cancel: bool,
    /// The fewest training rows the provider accepts.
    pub min_training_rows: Option<u64>,
}

impl Capabilities {
    /// A provider that accepts every common hyperparameter, a validation set
    /// and cancellation, and needs no deployment.
    pub fn full(learning_rate: LearningRateKind) -> Self {
        Self {
            validation_dataset: true,
            epochs: true,
            batch_size: true,
            learning_rate: Some(learning_rate),
            requires_deployment: false,
            cancel: true,
            min_training_rows: None,
        }
    }

    /// Sets whether results need a deployment.
    pub fn with_requires_deployment(mut self, yes: bool) -> Self {
        self.requires_deployment = yes;
        self
    }

    /// Sets the minimum number of training rows.
    pub fn with_min_training_rows(mut self, rows: u64) -> Self {
        self.min_training_rows = Some(rows);
        self
    }

    /// Refuses a spec that uses something this provider does not offer.
    pub fn check(&self, spec: &JobSpec) -> Result<()> {
        use crate::error::Location;
        let refuse = |field: &str, what: &str| {
            Err(Error::invalid_at(
                Location::column(field),
                format!("this provider does not accept {what}"),
            ))
        };
        if spec.validation.is_some() && !self.validation_dataset {
            return refuse("validation", "a validation dataset");
        }
        let h = &spec.hyperparameters;
        if h.epochs.value().is_some() && !self.epochs {
            return refuse("hyperparameters.epochs", "an epoch count");
        }
        if h.batch_size.value().is_some() && !self.batch_size {
            return refuse("hyperparameters.batch_size", "a batch size");
        }
        match (h.learning_rate.value(), self.learning_rate) {
            (None, _) => Ok(()),
            (Some(_), None) => refuse("hyperparameters.learning_rate", "a learning rate"),
            (Some(crate::LearningRate::Absolute(_)), Some(LearningRateKind::Multiplier)) => refuse(
                "hyperparameters.learning_rate",
                "an absolute learning rate (give a multiplier of its default)",
            ),
            (Some(crate::LearningRate::Multiplier(_)), Some(LearningRateKind::Absolute)) => refuse(
                "hyperparameters.learning_rate",
                "a learning-rate multiplier (give an absolute learning rate)",
            ),
            _ => Ok(()),
        }
    }
}

/// A fine-tuning backend: OpenAI, Azure OpenAI, Bedrock, the local trainer,
/// or a third-party crate's.
///
/// Implementations are cheap to share (`Arc<dyn FineTuneProvider>`) and
/// prove themselves by passing [`crate::testing::run_conformance`].
#[async_trait]
pub trait FineTuneProvider: Send + Sync + Debug {
    /// The provider's name as it appears in [`Job::provider`] (`openai`,
    /// `azure_openai`, `bedrock`, `local_hf`, …).
    fn name(&self) -> &str;

    /// What it can do.
    fn capabilities(&self) -> Capabilities;

    /// Pre-flight checks of a spec: the base model, hyperparameter ranges,
    /// the datasets' presence and shape. Nothing leaves the machine and
    /// nothing is billed; `submit` runs the same checks first.
    async fn validate(&self, spec: &JobSpec) -> Result<()>;

    /// What this provider accepts as data for `spec`'s base model (row
    /// counts, the longest example, reserved strings, …), for validators to
    /// apply before anything is uploaded. `None`: no rules beyond the
    /// capabilities.
    fn data_rules(&self, spec: &JobSpec) -> Option<DataRules> {
        let _ = spec;
        None
    }

    /// The tokenizer that counts (and bills) `spec`'s examples as this
    /// provider does, when it has one. May read the model's files.
    async fn token_counter(&self, spec: &JobSpec) -> Result<Option<Arc<dyn TokenCounter>>> {
        let _ = spec;
        Ok(None)
    }

    /// Validates the spec, prepares and uploads the data, and creates the job.
    async fn submit(&self, spec: &JobSpec) -> Result<Job>;

    /// The job as it stands now.
    async fn job(&self, id: &JobId) -> Result<Job>;

    /// The loss curve so far (training loss, validation loss when there is a
    /// validation set). May be empty before the first step.
    async fn metrics(&self, id: &JobId) -> Result<LossCurve>;

    /// Asks for the job to stop; returns the state right after asking
    /// (`Cancelling` or `Cancelled`).
    async fn cancel(&self, id: &JobId) -> Result<JobState>;

    /// Lists jobs, newest first.
    async fn list_jobs(&self, query: &ListJobs) -> Result<Page<Job>>;
}

#[async_trait]
impl<P: FineTuneProvider + ?Sized> FineTuneProvider for std::sync::Arc<P> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }

    async fn validate(&self, spec: &JobSpec) -> Result<()> {
        (**self).validate(spec).await
    }

    fn data_rules(&self, spec: &JobSpec) -> Option<DataRules> {
        (**self).data_rules(spec)
    }

    async fn token_counter(&self, spec: &JobSpec) -> Result<Option<Arc<dyn TokenCounter>>> {
        (**self).token_counter(spec).await
    }

    async fn submit(&self, spec: &JobSpec) -> Result<Job> {
        (**self).submit(spec).await
    }

    async fn job(&self, id: &JobId) -> Result<Job> {
        (**self).job(id).await
    }

    async fn metrics(&self, id: &JobId) -> Result<LossCurve> {
        (**self).metrics(id).await
    }

    async fn cancel(&self, id: &JobId) -> Result<JobState> {
        (**self).cancel(id).await
    }

    async fn list_jobs(&self, query: &ListJobs) -> Result<Page<Job>> {
        (**self).list_jobs(query).await
    }
}

/// How often [`wait_for_job`] polls, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct PollPolicy {
    /// The first wait between polls.
    pub initial_interval: Duration,
    /// The longest wait between polls.
    pub max_interval: Duration,
    /// Each wait is the previous one times this factor, up to `max_interval`.
    pub multiplier: f64,
    /// Give up after this long; `None` waits forever.
    pub timeout: Option<Duration>,
    /// Consecutive retryable errors tolerated before giving up.
    pub max_consecutive_errors: u32,
}

impl Default for PollPolicy {
    /// From 5 s to 60 s between polls, no timeout: fine-tuning jobs take
    /// minutes to hours.
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(60),
            multiplier: 1.5,
            timeout: None,
            max_consecutive_errors: 10,
        }
    }
}

impl PollPolicy {
    /// A fixed interval with a timeout: what tests and local jobs want.
    pub fn fixed(interval: Duration, timeout: Duration) -> Self {
        Self {
            initial_interval: interval,
            max_interval: interval,
            multiplier: 1.0,
            timeout: Some(timeout),
            max_consecutive_errors: 10,
        }
    }
}

/// Polls a job until it reaches a terminal state, calling `on_change` with
/// every state that differs from the previous one (progress included).
/// Retryable errors are ridden out up to the policy's limit; the provider's
/// `Retry-After` is honoured.
pub async fn wait_for_job(
    provider: &dyn FineTuneProvider,
    id: &JobId,
    policy: &PollPolicy,
    mut on_change: impl FnMut(&JobState) + Send,
) -> Result<Job> {
    let started = tokio::time::Instant::now();
    let mut interval = policy.initial_interval;
    let mut last: Option<JobState> = None;
    let mut errors = 0u32;
    loop {
        let mut wait = interval;
        match provider.job(id).await {
            Ok(job) => {
                errors = 0;
                if last.as_ref() != Some(&job.state) {
                    tracing::debug!(job = %id, state = %job.state, "job state changed");
                    on_change(&job.state);
                    last = Some(job.state.clone());
                    // Something moved: look again soon.
                    interval = policy.initial_interval;
                    wait = interval;
                }
                if job.state.is_terminal() {
                    return Ok(job);
                }
            }
            Err(e) if e.is_retryable() && errors < policy.max_consecutive_errors => {
                errors += 1;
                tracing::warn!(job = %id, error = %e, attempt = errors, "polling failed, will retry");
                if let Some(after) = e.retry_after() {
                    wait = wait.max(after);
                }
            }
            Err(e) => return Err(e),
        }
        if let Some(timeout) = policy.timeout {
            let elapsed = started.elapsed();
            if elapsed >= timeout {
                return Err(Error::TimedOut { after: elapsed });
            }
            wait = wait.min(timeout - elapsed);
        }
        tokio::time::sleep(wait).await;
        interval = interval.mul_f64(policy.multiplier.max(1.0)).min(policy.max_interval);
    }
}

/// Wraps a provider with a connection's administrator switch: `validate` and
/// `submit` are refused with [`Error::FineTuningDisabled`] unless the
/// connection has `fine_tuning_enabled`; reading and cancelling existing jobs
/// stays allowed.
///
/// Remember that fine-tuning applies none of the connection's guardrails.
#[derive(Debug)]
pub struct ConnectionGate<P> {
    connection: Connection,
    inner: P,
}

impl<P: FineTuneProvider> ConnectionGate<P> {
    /// Gates `inner` by `connection`'s switch.
    pub fn new(connection: Connection, inner: P) -> Self {
        Self { connection, inner }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

#[async_trait]
impl<P: FineTuneProvider> FineTuneProvider for ConnectionGate<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn validate(&self, spec: &JobSpec) -> Result<()> {
        self.connection.ensure_fine_tuning_enabled()?;
        self.inner.validate(spec).await
    }

    fn data_rules(&self, spec: &JobSpec) -> Option<DataRules> {
        self.inner.data_rules(spec)
    }

    async fn token_counter(&self, spec: &JobSpec) -> Result<Option<Arc<dyn TokenCounter>>> {
        self.inner.token_counter(spec).await
    }

    async fn submit(&self, spec: &JobSpec) -> Result<Job> {
        self.connection.ensure_fine_tuning_enabled()?;
        self.inner.submit(spec).await
    }

    async fn job(&self, id: &JobId) -> Result<Job> {
        self.inner.job(id).await
    }

    async fn metrics(&self, id: &JobId) -> Result<LossCurve> {
        self.inner.metrics(id).await
    }

    async fn cancel(&self, id: &JobId) -> Result<JobState> {
        self.inner.cancel(id).await
    }

    async fn list_jobs(&self, query: &ListJobs) -> Result<Page<Job>> {
        self.inner.list_jobs(query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DatasetSource, Hyperparameters, LearningRate, Setting};

    fn spec() -> JobSpec {
        JobSpec::new("m", DatasetSource::new("t.jsonl").unwrap())
    }

    #[test]
    fn capabilities_refuse_what_is_not_offered() {
        let caps = Capabilities::full(LearningRateKind::Multiplier);
        assert!(caps.check(&spec()).is_ok());
        let s = spec().with_hyperparameters(Hyperparameters {
            learning_rate: Setting::Value(LearningRate::Absolute(1e-4)),
            ..Hyperparameters::default()
        });
        let err = caps.check(&s).unwrap_err().to_string();
        assert!(err.contains("multiplier"), "{err}");
        let mut caps = Capabilities::full(LearningRateKind::Absolute);
        caps.validation_dataset = false;
        let s = spec().with_validation(DatasetSource::new("v.jsonl").unwrap());
        assert!(caps.check(&s).unwrap_err().to_string().contains("validation"));
    }
}
