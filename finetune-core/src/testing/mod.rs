//! The conformance suite every [`FineTuneProvider`] runs, an in-memory
//! reference provider, and [`PeerProcess`] for the emulators and mock
//! servers tests start (feature `testing`).
//!
//! A provider crate's tests implement [`ConformanceHarness`] over their own
//! backend (a fake server, a mock, a tiny local model) and call
//! [`run_conformance`]. The suite checks the behaviour applications rely on:
//!
//! * **submit → progress → succeeded**: a valid spec is accepted, the job is
//!   listed, at least one non-terminal state is observed, and it ends
//!   succeeded with a model whose loss curve is non-empty and finite (with
//!   validation loss when the spec has a validation set);
//! * **submit → cancel → cancelled**;
//! * **invalid spec → invalid-input error before any upload**;
//! * an unknown job id is `NotFound`.
//!
//! A provider crate's [`ProviderFactory`] proves itself with
//! [`run_factory_conformance`] over a [`FactoryHarness`]: it connects from a
//! [`Connection`], a disabled connection is refused before any request is
//! sent, and the chat model of a finished job (deployed first where the
//! provider requires) answers a request.
//!
//! ```
//! use finetune_core::testing::{run_conformance, MemoryHarness};
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let report = run_conformance(&MemoryHarness::default()).await.unwrap();
//! assert_eq!(report.passed.len(), 4);
//! # });
//! ```

mod memory;
mod peer;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

pub use memory::{Fault, MemoryChatModel, MemoryFactory, MemoryHarness, MemoryProvider};
pub use peer::{PeerProcess, free_loopback_port, wait_for_port};

use std::sync::Arc;

use crate::chat::ChatRequest;
use crate::connection::Connection;
use crate::error::Error;
use crate::factory::{ProviderFactory, Providers};
use crate::job::{JobId, JobSpec, JobState, ListJobs};
use crate::model::FineTunedModel;
use crate::provider::{FineTuneProvider, PollPolicy, wait_for_job};

/// What the suite needs from a provider's test setup.
#[async_trait]
pub trait ConformanceHarness: Send + Sync {
    /// The provider under test.
    fn provider(&self) -> &dyn FineTuneProvider;

    /// A spec the backend accepts and completes. Include a validation set
    /// when the provider supports one: the suite then expects validation loss.
    fn valid_spec(&self) -> JobSpec;

    /// A spec the provider must refuse before uploading anything (an unknown
    /// base model, an out-of-range hyperparameter, …).
    fn invalid_spec(&self) -> JobSpec;

    /// How many uploads (files or objects sent to the provider) the backend
    /// has seen so far.
    async fn uploads(&self) -> u64;

    /// How the suite polls jobs; the timeout bounds each lifecycle check.
    fn poll_policy(&self) -> PollPolicy {
        PollPolicy::fixed(Duration::from_millis(10), Duration::from_secs(60))
    }
}

/// A check the provider failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceFailure {
    /// The check's name.
    pub check: &'static str,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for ConformanceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conformance check `{}` failed: {}", self.check, self.message)
    }
}

impl std::error::Error for ConformanceFailure {}

/// The checks a provider passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceReport {
    /// Names of the passed checks, in order.
    pub passed: Vec<&'static str>,
}

type CheckResult = Result<(), ConformanceFailure>;

fn fail(check: &'static str, message: impl Into<String>) -> ConformanceFailure {
    ConformanceFailure { check, message: message.into() }
}

/// Runs every check, stopping at the first failure.
pub async fn run_conformance(
    harness: &dyn ConformanceHarness,
) -> Result<ConformanceReport, ConformanceFailure> {
    let mut passed = Vec::new();
    check_invalid_spec_rejected_before_upload(harness).await?;
    passed.push(INVALID);
    check_unknown_job_not_found(harness).await?;
    passed.push(UNKNOWN);
    check_submit_progress_succeed(harness).await?;
    passed.push(SUCCEED);
    check_cancel(harness).await?;
    passed.push(CANCEL);
    Ok(ConformanceReport { passed })
}

const SUCCEED: &str = "submit_progress_succeed";
const CANCEL: &str = "submit_cancel";
const INVALID: &str = "invalid_spec_rejected_before_upload";
const UNKNOWN: &str = "unknown_job_not_found";

/// submit → observe progress → succeeded with a model and a loss curve.
pub async fn check_submit_progress_succeed(harness: &dyn ConformanceHarness) -> CheckResult {
    let provider = harness.provider();
    let spec = harness.valid_spec();
    let caps = provider.capabilities();
    let job = provider
        .submit(&spec)
        .await
        .map_err(|e| fail(SUCCEED, format!("submitting a valid spec failed: {e}")))?;
    if job.provider != provider.name() {
        return Err(fail(
            SUCCEED,
            format!("job.provider is `{}`, expected `{}`", job.provider, provider.name()),
        ));
    }
    if job.base_model != spec.base_model {
        return Err(fail(
            SUCCEED,
            format!("job.base_model is `{}`, expected `{}`", job.base_model, spec.base_model),
        ));
    }
    if matches!(job.state, JobState::Failed { .. } | JobState::Cancelled) {
        return Err(fail(SUCCEED, format!("a freshly submitted job is already {}", job.state)));
    }
    find_in_listing(provider, &job.id).await.map_err(|m| fail(SUCCEED, m))?;

    let mut seen = Vec::new();
    let policy = harness.poll_policy();
    let done =
        wait_for_job(provider, &job.id, &policy, |s| seen.push(s.clone())).await.map_err(|e| {
            match e {
                Error::TimedOut { after } => fail(
                    SUCCEED,
                    format!(
                        "the job never reached a terminal state within {after:?}; states seen: {}",
                        names(&seen)
                    ),
                ),
                e => fail(SUCCEED, format!("following the job failed: {e}")),
            }
        })?;
    // The state `submit` answered does not count: a provider must let its
    // progress be observed while the job is under way.
    if !seen.iter().any(|s| !s.is_terminal()) {
        return Err(fail(
            SUCCEED,
            format!("no progress was observed while polling; states seen: {}", names(&seen)),
        ));
    }
    let mut last_step = 0;
    for s in &seen {
        if let JobState::Running { progress } = s
            && let Some(step) = progress.step
        {
            if step < last_step {
                return Err(fail(
                    SUCCEED,
                    format!("progress went backwards: step {step} after {last_step}"),
                ));
            }
            last_step = step;
        }
    }
    let JobState::Succeeded { model } = &done.state else {
        return Err(fail(SUCCEED, format!("the job ended {}, expected succeeded", done.state)));
    };
    if model.model_id.trim().is_empty() {
        return Err(fail(SUCCEED, "the fine-tuned model has an empty id"));
    }
    if model.base_model != spec.base_model {
        return Err(fail(
            SUCCEED,
            format!("model.base_model is `{}`, expected `{}`", model.base_model, spec.base_model),
        ));
    }
    if model.provider != provider.name() {
        return Err(fail(
            SUCCEED,
            format!("model.provider is `{}`, expected `{}`", model.provider, provider.name()),
        ));
    }
    if model.requires_deployment != caps.requires_deployment {
        return Err(fail(
            SUCCEED,
            format!(
                "model.requires_deployment is {} but the capabilities say {}",
                model.requires_deployment, caps.requires_deployment
            ),
        ));
    }
    check_curve(&model.loss_curve, spec.validation.is_some() && caps.validation_dataset)
        .map_err(|m| fail(SUCCEED, format!("the model's loss curve: {m}")))?;
    let metrics = provider
        .metrics(&job.id)
        .await
        .map_err(|e| fail(SUCCEED, format!("reading the metrics failed: {e}")))?;
    check_curve(&metrics, spec.validation.is_some() && caps.validation_dataset)
        .map_err(|m| fail(SUCCEED, format!("the job's metrics: {m}")))?;
    let again = provider
        .job(&job.id)
        .await
        .map_err(|e| fail(SUCCEED, format!("reading the finished job failed: {e}")))?;
    if !matches!(again.state, JobState::Succeeded { .. }) {
        return Err(fail(SUCCEED, format!("a succeeded job later reads as {}", again.state)));
    }
    Ok(())
}

/// submit → cancel → cancelled.
pub async fn check_cancel(harness: &dyn ConformanceHarness) -> CheckResult {
    let provider = harness.provider();
    if !provider.capabilities().cancel {
        return Ok(());
    }
    let job = provider
        .submit(&harness.valid_spec())
        .await
        .map_err(|e| fail(CANCEL, format!("submitting a valid spec failed: {e}")))?;
    let state =
        provider.cancel(&job.id).await.map_err(|e| fail(CANCEL, format!("cancel failed: {e}")))?;
    if !matches!(state, JobState::Cancelling | JobState::Cancelled) {
        return Err(fail(
            CANCEL,
            format!("cancel answered {state}, expected cancelling or cancelled"),
        ));
    }
    let done = wait_for_job(provider, &job.id, &harness.poll_policy(), |_| {})
        .await
        .map_err(|e| fail(CANCEL, format!("following the cancelled job failed: {e}")))?;
    if done.state != JobState::Cancelled {
        return Err(fail(CANCEL, format!("the cancelled job ended {}", done.state)));
    }
    Ok(())
}

/// An invalid spec is refused with an invalid-input error, by `validate`
/// and by `submit`, before anything is uploaded.
pub async fn check_invalid_spec_rejected_before_upload(
    harness: &dyn ConformanceHarness,
) -> CheckResult {
    let provider = harness.provider();
    let spec = harness.invalid_spec();
    let before = harness.uploads().await;
    match provider.validate(&spec).await {
        Err(Error::InvalidInput { .. }) => {}
        Err(e) => {
            return Err(fail(
                INVALID,
                format!("validate gave {e}, expected an invalid-input error"),
            ));
        }
        Ok(()) => return Err(fail(INVALID, "validate accepted the invalid spec")),
    }
    match provider.submit(&spec).await {
        Err(Error::InvalidInput { .. }) => {}
        Err(e) => {
            return Err(fail(INVALID, format!("submit gave {e}, expected an invalid-input error")));
        }
        Ok(job) => {
            return Err(fail(
                INVALID,
                format!("submit accepted the invalid spec as job {}", job.id),
            ));
        }
    }
    let after = harness.uploads().await;
    if after != before {
        return Err(fail(
            INVALID,
            format!("{} upload(s) happened before the spec was refused", after - before),
        ));
    }
    Ok(())
}

/// Reading a job that does not exist is `NotFound`.
pub async fn check_unknown_job_not_found(harness: &dyn ConformanceHarness) -> CheckResult {
    let id = JobId::new("ftjob-conformance-does-not-exist");
    match harness.provider().job(&id).await {
        Err(Error::NotFound { .. }) => Ok(()),
        Err(e) => {
            Err(fail(UNKNOWN, format!("reading an unknown job gave {e}, expected not found")))
        }
        Ok(job) => Err(fail(UNKNOWN, format!("reading an unknown job returned {}", job.state))),
    }
}

fn names(states: &[JobState]) -> String {
    states.iter().map(JobState::name).collect::<Vec<_>>().join(" → ")
}

fn check_curve(curve: &crate::LossCurve, expect_validation: bool) -> Result<(), String> {
    let train = curve.train_series();
    if train.is_empty() {
        return Err("no training loss recorded".into());
    }
    if let Some((step, loss)) = curve
        .train_series()
        .into_iter()
        .chain(curve.validation_series())
        .find(|(_, l)| !l.is_finite())
    {
        return Err(format!("loss {loss} at step {step} is not finite"));
    }
    if expect_validation && !curve.has_validation() {
        return Err("the spec has a validation set but no validation loss was recorded".into());
    }
    Ok(())
}

async fn find_in_listing(provider: &dyn FineTuneProvider, id: &JobId) -> Result<(), String> {
    let mut query = ListJobs { limit: Some(100), after: None };
    for _ in 0..100 {
        let page =
            provider.list_jobs(&query).await.map_err(|e| format!("listing jobs failed: {e}"))?;
        if page.items.iter().any(|j| &j.id == id) {
            return Ok(());
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    Err(format!("the submitted job {id} is not in the job listing"))
}

/// What the factory checks need from a provider crate's test setup.
#[async_trait]
pub trait FactoryHarness: Send + Sync {
    /// The factory under test.
    fn factory(&self) -> Arc<dyn ProviderFactory>;

    /// A connection of the factory's kind, with fine-tuning enabled, that
    /// reaches the test backend.
    fn connection(&self) -> Connection;

    /// A spec the backend accepts and completes.
    fn valid_spec(&self) -> JobSpec;

    /// Requests the backend has received so far.
    async fn requests(&self) -> u64;

    /// Deploys a finished model whose provider requires deployments and
    /// returns what its chat model is opened with (a deployment name or
    /// ARN). Providers without deployments keep the default.
    async fn deploy(&self, model: &FineTunedModel) -> crate::Result<Option<String>> {
        let _ = model;
        Ok(None)
    }

    /// The request the finished model must answer.
    fn chat_request(&self) -> ChatRequest {
        ChatRequest::user("Reply with a short greeting.").with_max_tokens(16)
    }

    /// How the suite polls the job.
    fn poll_policy(&self) -> PollPolicy {
        PollPolicy::fixed(Duration::from_millis(10), Duration::from_secs(120))
    }
}

const CONNECTS: &str = "factory_connects";
const DISABLED: &str = "disabled_connection_refused";
const CHAT: &str = "finished_model_answers";

/// Runs the factory checks, stopping at the first failure.
pub async fn run_factory_conformance(
    harness: &dyn FactoryHarness,
) -> Result<ConformanceReport, ConformanceFailure> {
    let factory = harness.factory();
    let connection = harness.connection();
    if factory.kind() != connection.provider() {
        return Err(fail(
            CONNECTS,
            format!(
                "the factory serves `{}` but the harness's connection is `{}`",
                factory.kind(),
                connection.provider()
            ),
        ));
    }
    let providers = Providers::new().with_shared(Arc::clone(&factory));
    let provider = providers
        .connect(&connection)
        .await
        .map_err(|e| fail(CONNECTS, format!("connecting `{}` failed: {e}", connection.name)))?;
    if provider.name() != factory.kind().to_string() {
        return Err(fail(
            CONNECTS,
            format!("the provider is named `{}`, its kind `{}`", provider.name(), factory.kind()),
        ));
    }
    let mut passed = vec![CONNECTS];

    let mut disabled = connection.clone().with_fine_tuning_enabled(false);
    disabled.name = format!("{}-disabled", connection.name);
    let before = harness.requests().await;
    match providers.connect(&disabled).await {
        Err(Error::FineTuningDisabled { connection: name }) if name == disabled.name => {}
        Err(e) => return Err(fail(DISABLED, format!("expected fine-tuning disabled, got {e}"))),
        Ok(_) => return Err(fail(DISABLED, "a disabled connection was connected")),
    }
    let after = harness.requests().await;
    if after != before {
        return Err(fail(DISABLED, format!("{} request(s) were sent", after - before)));
    }
    passed.push(DISABLED);

    let spec = harness.valid_spec();
    let job = provider
        .submit(&spec)
        .await
        .map_err(|e| fail(CHAT, format!("submitting a valid spec failed: {e}")))?;
    let done = wait_for_job(&*provider, &job.id, &harness.poll_policy(), |_| {})
        .await
        .map_err(|e| fail(CHAT, format!("following the job failed: {e}")))?;
    let JobState::Succeeded { model } = &done.state else {
        return Err(fail(CHAT, format!("the job ended {}, expected succeeded", done.state)));
    };
    let deployment = if model.requires_deployment {
        match providers.chat_model(&connection, model, None).await {
            Err(Error::NotDeployed { model: named }) if named == model.model_id => {}
            Err(e) => {
                return Err(fail(
                    CHAT,
                    format!("a model without its deployment gave {e}, expected not deployed"),
                ));
            }
            Ok(_) => return Err(fail(CHAT, "a model that needs a deployment opened without one")),
        }
        let deployed = harness
            .deploy(model)
            .await
            .map_err(|e| fail(CHAT, format!("deploying the model failed: {e}")))?;
        Some(deployed.ok_or_else(|| {
            fail(CHAT, "the model requires a deployment but the harness made none")
        })?)
    } else {
        None
    };
    let chat = providers
        .chat_model(&connection, model, deployment.as_deref())
        .await
        .map_err(|e| fail(CHAT, format!("opening the model's chat failed: {e}")))?;
    let request = harness.chat_request();
    let answer =
        chat.chat(&request).await.map_err(|e| fail(CHAT, format!("the chat failed: {e}")))?;
    if answer.text.trim().is_empty() {
        return Err(fail(CHAT, format!("the answer is empty ({answer:?})")));
    }
    if answer.usage.completion_tokens == 0 || answer.usage.prompt_tokens == 0 {
        return Err(fail(CHAT, format!("the answer's usage is not counted: {:?}", answer.usage)));
    }
    if let Some(max) = request.max_tokens
        && answer.usage.completion_tokens > u64::from(max)
    {
        return Err(fail(
            CHAT,
            format!("{} tokens answered, max_tokens was {max}", answer.usage.completion_tokens),
        ));
    }
    passed.push(CHAT);
    Ok(ConformanceReport { passed })
}
