//! The conformance suite accepts a correct provider and catches broken ones.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use finetune_core::testing::{Fault, MemoryHarness, MemoryProvider, run_conformance};
use finetune_core::{
    Capabilities, Connection, ConnectionGate, ConnectionSettings, Error, FineTuneProvider, Job,
    JobId, JobSpec, JobState, ListJobs, LossCurve, Page, PollPolicy, Result, Secret, wait_for_job,
};

#[tokio::test]
async fn reference_provider_passes() {
    let report = run_conformance(&MemoryHarness::default()).await.unwrap();
    assert_eq!(
        report.passed,
        [
            "invalid_spec_rejected_before_upload",
            "unknown_job_not_found",
            "submit_progress_succeed",
            "submit_cancel"
        ]
    );
}

async fn failure_for(fault: Fault) -> finetune_core::testing::ConformanceFailure {
    run_conformance(&MemoryHarness::with_fault(fault))
        .await
        .expect_err("the suite must reject a broken provider")
}

#[tokio::test]
async fn catches_a_job_that_never_finishes() {
    let f = failure_for(Fault::NeverFinishes).await;
    assert_eq!(f.check, "submit_progress_succeed");
    assert!(f.message.contains("never reached a terminal state"), "{f}");
}

#[tokio::test]
async fn catches_an_empty_loss_curve() {
    let f = failure_for(Fault::EmptyLossCurve).await;
    assert_eq!(f.check, "submit_progress_succeed");
    assert!(f.message.contains("no training loss"), "{f}");
}

#[tokio::test]
async fn catches_ignored_cancellation() {
    let f = failure_for(Fault::IgnoresCancel).await;
    assert_eq!(f.check, "submit_cancel");
    assert!(f.message.contains("ended succeeded"), "{f}");
}

#[tokio::test]
async fn catches_uploads_before_validation() {
    let f = failure_for(Fault::UploadsBeforeValidating).await;
    assert_eq!(f.check, "invalid_spec_rejected_before_upload");
    assert!(f.message.contains("upload"), "{f}");
}

#[tokio::test]
async fn catches_missing_progress() {
    let f = failure_for(Fault::NoProgress).await;
    assert_eq!(f.check, "submit_progress_succeed");
    assert!(f.message.contains("no progress"), "{f}");
}

#[tokio::test]
async fn catches_missing_validation_loss() {
    let f = failure_for(Fault::DropsValidationLoss).await;
    assert_eq!(f.check, "submit_progress_succeed");
    assert!(f.message.contains("validation"), "{f}");
}

#[tokio::test]
async fn listing_pages_newest_first() {
    let p = MemoryProvider::new();
    let h = MemoryHarness::default();
    let spec = finetune_core::testing::ConformanceHarness::valid_spec(&h);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(p.submit(&spec).await.unwrap().id);
    }
    let first = p.list_jobs(&ListJobs { limit: Some(2), after: None }).await.unwrap();
    assert_eq!(
        first.items.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        [ids[4].clone(), ids[3].clone()]
    );
    let second =
        p.list_jobs(&ListJobs { limit: Some(2), after: first.next.clone() }).await.unwrap();
    assert_eq!(second.items[0].id, ids[2]);
    let third =
        p.list_jobs(&ListJobs { limit: Some(2), after: second.next.clone() }).await.unwrap();
    assert_eq!(third.items.len(), 1);
    assert_eq!(third.next, None);
}

/// A provider whose `job` fails with retryable errors a few times, then
/// reports a finished job.
#[derive(Debug)]
struct Flaky {
    failures_left: AtomicU32,
    retryable: bool,
    calls: AtomicU32,
}

#[async_trait]
impl FineTuneProvider for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(finetune_core::LearningRateKind::Absolute)
    }
    async fn validate(&self, _: &JobSpec) -> Result<()> {
        Ok(())
    }
    async fn submit(&self, _: &JobSpec) -> Result<Job> {
        Err(Error::Unsupported { message: "read-only".into() })
    }
    async fn job(&self, id: &JobId) -> Result<Job> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failures_left.load(Ordering::SeqCst) > 0 {
            self.failures_left.fetch_sub(1, Ordering::SeqCst);
            return Err(if self.retryable {
                Error::RateLimited {
                    retry_after: Some(Duration::from_millis(5)),
                    message: "slow down".into(),
                }
            } else {
                Error::Authentication { message: "expired".into() }
            });
        }
        Ok(Job {
            id: id.clone(),
            provider: "flaky".into(),
            base_model: "m".into(),
            state: JobState::Cancelled,
            created_at: chrono::Utc::now(),
            metadata: Default::default(),
        })
    }
    async fn metrics(&self, _: &JobId) -> Result<LossCurve> {
        Ok(LossCurve::new())
    }
    async fn cancel(&self, _: &JobId) -> Result<JobState> {
        Ok(JobState::Cancelled)
    }
    async fn list_jobs(&self, _: &ListJobs) -> Result<Page<Job>> {
        Ok(Page { items: vec![], next: None })
    }
}

#[tokio::test]
async fn waiting_rides_out_retryable_errors_but_not_others() {
    let policy = PollPolicy::fixed(Duration::from_millis(1), Duration::from_secs(5));
    let p = Flaky { failures_left: AtomicU32::new(3), retryable: true, calls: AtomicU32::new(0) };
    let job = wait_for_job(&p, &JobId::new("j"), &policy, |_| {}).await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(p.calls.load(Ordering::SeqCst), 4);

    let p = Flaky { failures_left: AtomicU32::new(1), retryable: false, calls: AtomicU32::new(0) };
    let err = wait_for_job(&p, &JobId::new("j"), &policy, |_| {}).await.unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }));
    assert_eq!(p.calls.load(Ordering::SeqCst), 1);

    let mut policy = policy;
    policy.max_consecutive_errors = 2;
    let p = Flaky { failures_left: AtomicU32::new(5), retryable: true, calls: AtomicU32::new(0) };
    assert!(matches!(
        wait_for_job(&p, &JobId::new("j"), &policy, |_| {}).await,
        Err(Error::RateLimited { .. })
    ));
}

#[tokio::test]
async fn waiting_reports_each_change_once() {
    let p = MemoryProvider::new();
    let spec = finetune_core::testing::ConformanceHarness::valid_spec(&MemoryHarness::default());
    let job = p.submit(&spec).await.unwrap();
    let seen = Mutex::new(Vec::new());
    let policy = PollPolicy::fixed(Duration::from_millis(1), Duration::from_secs(5));
    let done =
        wait_for_job(&p, &job.id, &policy, |s| seen.lock().unwrap().push(s.clone())).await.unwrap();
    let seen = seen.into_inner().unwrap();
    // validating, 8 running steps, succeeded: every change, none twice in a row.
    assert_eq!(seen.len(), 1 + 8 + 1, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] != w[1]));
    assert_eq!(seen.last(), Some(&done.state));
    let model = done.state.model().unwrap();
    assert_eq!(model.loss_curve.len(), 8);
    assert_eq!(model.loss_curve.validation_series().len(), 2);
}

#[tokio::test]
async fn the_connection_switch_gates_submission() {
    let settings = ConnectionSettings::Other {
        name: "memory".into(),
        options: Default::default(),
        secrets: [("token".to_owned(), Secret::new("s3cr3t"))].into(),
    };
    let spec = finetune_core::testing::ConformanceHarness::valid_spec(&MemoryHarness::default());
    let gated =
        ConnectionGate::new(Connection::new("team-a", settings.clone()), MemoryProvider::new());
    assert!(matches!(gated.validate(&spec).await, Err(Error::FineTuningDisabled { .. })));
    let err = gated.submit(&spec).await.unwrap_err();
    assert!(err.to_string().contains("team-a"), "{err}");
    assert_eq!(gated.inner().uploads(), 0, "nothing leaves the building");
    assert!(!format!("{gated:?}").contains("s3cr3t"));

    let enabled = ConnectionGate::new(
        Connection::new("team-a", settings).with_fine_tuning_enabled(true),
        MemoryProvider::new(),
    );
    enabled.submit(&spec).await.unwrap();
    assert_eq!(enabled.inner().uploads(), 2);
}

/// What the memory factory's harness needs: the shared provider's uploads
/// stand for its requests.
struct MemoryFactoryHarness(finetune_core::testing::MemoryFactory);

#[async_trait::async_trait]
impl finetune_core::testing::FactoryHarness for MemoryFactoryHarness {
    fn factory(&self) -> std::sync::Arc<dyn finetune_core::ProviderFactory> {
        std::sync::Arc::new(self.0.clone())
    }

    fn connection(&self) -> finetune_core::Connection {
        finetune_core::Connection::new("lab", finetune_core::testing::MemoryFactory::settings())
            .with_fine_tuning_enabled(true)
    }

    fn valid_spec(&self) -> finetune_core::JobSpec {
        use finetune_core::testing::ConformanceHarness;
        MemoryHarness::default().valid_spec()
    }

    async fn requests(&self) -> u64 {
        self.0.provider.uploads()
    }

    fn poll_policy(&self) -> finetune_core::PollPolicy {
        finetune_core::PollPolicy::fixed(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_secs(5),
        )
    }
}

#[tokio::test]
async fn the_memory_factory_passes_the_factory_checks() {
    let harness = MemoryFactoryHarness(finetune_core::testing::MemoryFactory::default());
    let report = finetune_core::testing::run_factory_conformance(&harness).await.unwrap();
    assert_eq!(
        report.passed,
        ["factory_connects", "disabled_connection_refused", "finished_model_answers"]
    );
    // The model answers as its backend says, through the shared interface.
    let connection = finetune_core::testing::FactoryHarness::connection(&harness);
    let providers = finetune_core::Providers::new().with(harness.0.clone());
    let unknown = finetune_core::FineTunedModel {
        provider: "memory".into(),
        model_id: "memory-small:never:trained".into(),
        base_model: "memory-small".into(),
        job_id: None,
        created_at: finetune_core::chrono::Utc::now(),
        requires_deployment: false,
        artifacts: finetune_core::ModelArtifacts::Remote { id: "x".into() },
        loss_curve: Default::default(),
        metadata: Default::default(),
    };
    let err = providers.chat_model(&connection, &unknown, None).await.unwrap_err();
    assert!(matches!(err, finetune_core::Error::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn a_set_without_the_kind_says_what_it_links() {
    let providers =
        finetune_core::Providers::new().with(finetune_core::testing::MemoryFactory::default());
    let connection = finetune_core::Connection::new(
        "prod",
        finetune_core::ConnectionSettings::Bedrock(finetune_core::BedrockSettings::default()),
    )
    .with_fine_tuning_enabled(true);
    let err = providers.connect(&connection).await.unwrap_err().to_string();
    assert!(err.contains("bedrock") && err.contains("memory"), "{err}");
}
