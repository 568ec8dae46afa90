//! Full lifecycles of the OpenAI and Azure OpenAI providers against the
//! stateful fake: success with a loss curve, failure, cancellation, pause
//! and resume, storms of 429 and 5xx, a create whose answer is lost, a
//! connection cut mid-upload, upload reuse, and the core conformance suite.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use finetune_core::testing::{ConformanceHarness, run_conformance};
use finetune_core::{
    DatasetSource, Error, FineTuneProvider, FinishReason, Hyperparameters, JobId, JobSpec,
    JobState, LearningRate, ListJobs, PollPolicy, Secret, Setting, wait_for_job,
};
use finetune_providers::testing::{CutProxy, FakeFlavor, FakeOpenAi, Fault, Method};
use finetune_providers::{
    AzureCredential, AzureOpenAiConfig, AzureOpenAiProvider, ChatRequest, HttpSettings,
    OpenAiConfig, OpenAiProvider, RetryPolicy,
};
use support::write_dataset;

const KEY: &str = "sk-fake-0123456789";

fn fast_http() -> HttpSettings {
    HttpSettings {
        timeout: Duration::from_secs(20),
        retry: RetryPolicy {
            max_retries: 6,
            initial_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(40),
            jitter: true,
            max_retry_after: Duration::from_secs(2),
        },
        ..HttpSettings::default()
    }
}

fn openai(url: &str) -> OpenAiProvider {
    OpenAiProvider::new(
        OpenAiConfig::new(Secret::new(KEY)).with_base_url(url).with_http(fast_http()),
    )
    .unwrap()
}

fn azure(url: &str) -> AzureOpenAiProvider {
    AzureOpenAiProvider::new(
        AzureOpenAiConfig::new(url, AzureCredential::ApiKey(Secret::new(KEY)))
            .with_http(fast_http()),
    )
    .unwrap()
}

fn poll() -> PollPolicy {
    PollPolicy::fixed(Duration::from_millis(5), Duration::from_secs(30))
}

#[tokio::test]
async fn openai_lifecycle_with_validation_ends_with_a_usable_model() {
    let fake = FakeOpenAi::start(FakeFlavor::OpenAi, KEY).await;
    let provider = openai(&fake.url());
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::new("gpt-4o-mini-2024-07-18", write_dataset(dir.path(), "train.jsonl", 12))
        .with_validation(write_dataset(dir.path(), "valid.jsonl", 4))
        .with_suffix("numbers")
        .with_seed(7)
        .with_metadata("team", "search")
        .with_hyperparameters(Hyperparameters {
            epochs: Setting::Value(3),
            batch_size: Setting::Auto,
            learning_rate: Setting::Value(LearningRate::Multiplier(0.5)),
        });
    let job = provider.submit(&spec).await.unwrap();
    assert_eq!(job.state, JobState::Validating);
    assert_eq!(job.metadata.get("team").map(String::as_str), Some("search"));
    assert_eq!(fake.uploads(), 2);
    // The file written is chat JSONL; the system message only where given.
    let sent = fake.job_hyperparameters(job.id.as_str()).unwrap();
    assert_eq!(sent["n_epochs"], 3);
    assert_eq!(sent["batch_size"], "auto");
    assert_eq!(sent["learning_rate_multiplier"], 0.5);

    let mut states = Vec::new();
    let done = wait_for_job(&provider, &job.id, &poll(), |s| states.push(s.clone())).await.unwrap();
    let steps: Vec<u64> = states
        .iter()
        .filter_map(|s| match s {
            JobState::Running { progress } => progress.step,
            _ => None,
        })
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4], "{states:?}");
    let JobState::Succeeded { model } = &done.state else { panic!("{:?}", done.state) };
    assert!(model.model_id.starts_with("ft:gpt-4o-mini-2024-07-18:fake-org:numbers:"));
    assert!(!model.requires_deployment);
    let curve = &model.loss_curve;
    assert_eq!(curve.train_series().len(), 4);
    assert_eq!(curve.validation_series().iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![2, 4]);
    assert!((curve.train_series()[0].1 - 1.0).abs() < 1e-12);
    assert_eq!(provider.metrics(&job.id).await.unwrap(), *curve);

    // Events, paged and whole; checkpoints.
    let first = provider.events_page(&job.id, None, 2).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let all = provider.events(&job.id).await.unwrap();
    assert_eq!(all.iter().filter(|e| e.kind == "metrics").count(), 4);
    assert!(all.len() > 2 && first.next.is_some());
    let checkpoints = provider.checkpoints(&job.id).await.unwrap();
    assert_eq!(checkpoints.iter().map(|c| c.step).collect::<Vec<_>>(), vec![4, 2]);

    // The model answers like any other LLM, its request and usage in the
    // shared shape, cut at its token limit.
    let provider = std::sync::Arc::new(provider);
    let chat = provider.chat_model(model.model_id.clone());
    let answer = chat
        .chat(&ChatRequest::user("What is 2 plus one?").with_system("Be brief.").with_seed(3))
        .await
        .unwrap();
    assert_eq!(answer.text, format!("{} says: What is 2 plus one?", model.model_id));
    assert_eq!(answer.finish_reason, FinishReason::Stop);
    assert_eq!((answer.usage.prompt_tokens, answer.usage.completion_tokens), (7, 7));
    let cut = chat.chat(&ChatRequest::user("one two three").with_max_tokens(3)).await.unwrap();
    assert_eq!((cut.text.split(' ').count(), cut.finish_reason), (3, FinishReason::Length));
    let body = fake.last_chat_body().unwrap();
    assert_eq!(body["max_completion_tokens"], 3);
    let err = provider.chat_model("ft:unknown").chat(&ChatRequest::user("hi")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(provider.retries(), 0);
}

#[tokio::test]
async fn failed_cancelled_paused_and_listed_jobs() {
    let fake = FakeOpenAi::start(FakeFlavor::OpenAi, KEY).await;
    let provider = openai(&fake.url());
    let dir = tempfile::tempdir().unwrap();
    let train = write_dataset(dir.path(), "train.jsonl", 10);

    let failing = provider.submit(&JobSpec::new("base-will-fail", train.clone())).await.unwrap();
    let done = wait_for_job(&provider, &failing.id, &poll(), |_| {}).await.unwrap();
    match &done.state {
        JobState::Failed { reason, code } => {
            assert!(reason.contains("too few examples") && reason.contains("training_file"));
            assert_eq!(code.as_deref(), Some("invalid_training_file"));
        }
        other => panic!("{other:?}"),
    }

    let job = provider.submit(&JobSpec::new("gpt-4o-mini", train.clone())).await.unwrap();
    provider.job(&job.id).await.unwrap(); // now running
    assert_eq!(provider.pause(&job.id).await.unwrap(), JobState::Paused);
    assert_eq!(provider.job(&job.id).await.unwrap().state, JobState::Paused);
    assert!(matches!(provider.resume(&job.id).await.unwrap(), JobState::Running { .. }));
    assert_eq!(provider.cancel(&job.id).await.unwrap(), JobState::Cancelled);
    let err = provider.cancel(&job.id).await.unwrap_err();
    match err {
        Error::Provider { status: Some(400), code, .. } => {
            assert_eq!(code.as_deref(), Some("invalid_state"))
        }
        e => panic!("{e}"),
    }
    // Same data: the training file is reused, not uploaded again.
    assert_eq!(fake.uploads(), 1);

    // Listing pages newest first.
    for _ in 0..3 {
        provider.submit(&JobSpec::new("gpt-4o-mini", train.clone())).await.unwrap();
    }
    let mut query = ListJobs { limit: Some(2), after: None };
    let mut seen = Vec::new();
    loop {
        let page = provider.list_jobs(&query).await.unwrap();
        seen.extend(page.items.into_iter().map(|j| j.id));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.last(), Some(&failing.id));
    let unknown = provider.job(&JobId::new("ftjob-nope")).await.unwrap_err();
    assert!(matches!(unknown, Error::NotFound { .. }), "{unknown}");
}

#[tokio::test]
async fn a_storm_of_429s_is_ridden_out_honouring_retry_after() {
    let fake = FakeOpenAi::start(FakeFlavor::OpenAi, KEY).await;
    let provider = openai(&fake.url());
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::new("gpt-4o-mini", write_dataset(dir.path(), "train.jsonl", 10));
    for _ in 0..3 {
        fake.inject(Fault::status(Method::POST, "/fine_tuning/jobs", 429).retry_after(0.2));
    }
    let started = Instant::now();
    let job = provider.submit(&spec).await.unwrap();
    let took = started.elapsed();
    println!("429 storm: {} retries, {} job(s), {took:?}", provider.retries(), fake.job_count());
    assert_eq!(provider.retries(), 3);
    assert_eq!(fake.injected(), 3);
    assert_eq!(fake.job_count(), 1);
    // Backoff alone is at most 40 ms a retry: the server's 200 ms were honoured.
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(matches!(provider.job(&job.id).await.unwrap().state, JobState::Running { .. }));
}

#[tokio::test]
async fn a_lost_create_answer_never_makes_a_second_job() {
    for flavor in [FakeFlavor::OpenAi, FakeFlavor::Azure] {
        let fake = FakeOpenAi::start(flavor, KEY).await;
        let dir = tempfile::tempdir().unwrap();
        let spec = JobSpec::new("gpt-4o-mini", write_dataset(dir.path(), "train.jsonl", 10))
            .with_suffix("once");
        fake.inject(Fault::status(Method::POST, "/fine_tuning/jobs", 500));
        fake.inject(Fault::status(Method::POST, "/fine_tuning/jobs", 502).committed());
        fake.inject(Fault::status(Method::GET, "/fine_tuning/jobs", 503));
        let (job, retries) = match flavor {
            FakeFlavor::OpenAi => {
                let p = openai(&fake.url());
                (p.submit(&spec).await.unwrap(), p.retries())
            }
            FakeFlavor::Azure => {
                let p = azure(&fake.url());
                (p.submit(&spec).await.unwrap(), p.retries())
            }
        };
        println!(
            "{flavor:?} 5xx storm with a lost answer: {retries} retries, {} job(s)",
            fake.job_count()
        );
        assert_eq!(fake.job_count(), 1, "{flavor:?}: {:?}", fake.requests());
        assert_eq!(fake.injected(), 3);
        assert_eq!(retries, 3, "{flavor:?}");
        let creates = fake.requests().iter().filter(|r| *r == "POST /fine_tuning/jobs").count();
        assert_eq!(creates, 2, "the third attempt found the job instead of creating one");
        assert_eq!(job.base_model, "gpt-4o-mini");
    }
}

#[tokio::test]
async fn retries_run_out_with_the_last_error() {
    let fake = FakeOpenAi::start(FakeFlavor::OpenAi, KEY).await;
    let mut http = fast_http();
    http.retry.max_retries = 2;
    let provider = OpenAiProvider::new(
        OpenAiConfig::new(Secret::new(KEY)).with_base_url(fake.url()).with_http(http),
    )
    .unwrap();
    for _ in 0..5 {
        fake.inject(Fault::status(Method::GET, "/fine_tuning/jobs/*", 500));
    }
    let err = provider.job(&JobId::new("ftjob-x")).await.unwrap_err();
    assert!(matches!(err, Error::Provider { status: Some(500), .. }), "{err}");
    assert_eq!(provider.retries(), 2);
    assert_eq!(fake.injected(), 3);
    // 4xx other than 408/409/429 is not retried.
    let bad = OpenAiProvider::new(
        OpenAiConfig::new(Secret::new("sk-wrong")).with_base_url(fake.url()).with_http(fast_http()),
    )
    .unwrap();
    let err = bad.job(&JobId::new("ftjob-x")).await.unwrap_err();
    assert!(matches!(err, Error::Authentication { .. }), "{err}");
    assert_eq!(bad.retries(), 0);
    assert!(!err.to_string().contains("sk-wrong"));
}

#[tokio::test]
async fn a_connection_cut_mid_upload_is_retried_and_stores_one_file() {
    let fake = FakeOpenAi::start(FakeFlavor::OpenAi, KEY).await;
    let proxy = CutProxy::start(fake.addr()).await;
    let provider = openai(&proxy.url());
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::new("gpt-4o-mini", write_dataset(dir.path(), "train.jsonl", 2000));
    proxy.cut_next("POST /files", 20_000);
    let job = provider.submit(&spec).await.unwrap();
    println!(
        "cut mid-upload: {} cut(s), {} retries, {} file(s)",
        proxy.cuts(),
        provider.retries(),
        fake.file_count()
    );
    assert_eq!(proxy.cuts(), 1);
    assert!(provider.retries() >= 1);
    assert_eq!(fake.file_count(), 1);
    assert_eq!(fake.uploads(), 1);
    assert_eq!(fake.job_count(), 1);
    assert!(!job.id.as_str().is_empty());
}

#[tokio::test]
async fn identical_data_is_uploaded_once_even_by_a_new_client() {
    let fake = FakeOpenAi::start(FakeFlavor::OpenAi, KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let train = write_dataset(dir.path(), "train.jsonl", 10);
    let first = openai(&fake.url()).upload(&train).await.unwrap();
    assert!(!first.reused);
    let again = openai(&fake.url()).upload(&train).await.unwrap();
    assert!(again.reused);
    assert_eq!(again.id, first.id);
    assert_eq!(fake.uploads(), 1);
    // What was uploaded is chat JSONL of the rows, nothing else.
    let content = String::from_utf8(fake.file_content(&first.id).unwrap()).unwrap();
    assert_eq!(content.lines().count(), 10);
    let line: serde_json::Value = serde_json::from_str(content.lines().next().unwrap()).unwrap();
    assert_eq!(line["messages"][0]["role"], "system");
    assert_eq!(line["messages"][2]["content"], "1");
    // Different data is a different file.
    let other = write_dataset(dir.path(), "other.jsonl", 11);
    assert!(!openai(&fake.url()).upload(&other).await.unwrap().reused);
    assert_eq!(fake.uploads(), 2);
}

#[tokio::test]
async fn bad_data_and_bad_specs_are_refused_before_any_upload() {
    let fake = FakeOpenAi::start(FakeFlavor::OpenAi, KEY).await;
    let provider = openai(&fake.url());
    let dir = tempfile::tempdir().unwrap();
    let few = write_dataset(dir.path(), "few.jsonl", 3);
    let err = provider.submit(&JobSpec::new("gpt-4o-mini", few)).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::InvalidInput { .. }) && text.contains("few.jsonl"), "{text}");
    let broken = dir.path().join("broken.jsonl");
    let mut rows = std::fs::read_to_string(dir.path().join("few.jsonl")).unwrap().repeat(4);
    rows.push_str("{\"prompt\": \"x\"}\n");
    std::fs::write(&broken, rows).unwrap();
    let err = provider
        .submit(&JobSpec::new("gpt-4o-mini", DatasetSource::new(broken.to_str().unwrap()).unwrap()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.jsonl") && err.contains("13") && err.contains("completion"),
        "{err}"
    );
    let spec = JobSpec::new("gpt-4o-mini", write_dataset(dir.path(), "ok.jsonl", 10));
    for bad in [
        spec.clone().with_suffix("x".repeat(65)),
        spec.clone().with_extra("lora_r", 8),
        spec.clone().with_seed(u64::MAX),
        spec.clone().with_hyperparameters(Hyperparameters {
            learning_rate: Setting::Value(LearningRate::Absolute(1e-4)),
            ..Hyperparameters::default()
        }),
    ] {
        let err = provider.submit(&bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    }
    assert_eq!(fake.uploads(), 0);
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

#[tokio::test]
async fn azure_lifecycle_with_its_differences() {
    let fake = FakeOpenAi::start(FakeFlavor::Azure, KEY).await;
    let provider = azure(&fake.url());
    let dir = tempfile::tempdir().unwrap();
    let spec = JobSpec::new("gpt-4o-mini-2024-07-18", write_dataset(dir.path(), "train.jsonl", 10))
        .with_validation(write_dataset(dir.path(), "valid.jsonl", 2))
        .with_suffix("az-numbers")
        .with_hyperparameters(Hyperparameters { epochs: Setting::Value(2), ..Default::default() });
    let job = provider.submit(&spec).await.unwrap();
    assert_eq!(job.state, JobState::Queued);
    // Azure takes numbers only: what is auto is left out.
    let sent = fake.job_hyperparameters(job.id.as_str()).unwrap();
    assert_eq!(sent, serde_json::json!({"n_epochs": 2}));
    // Files were imported (pending → processed) before the job was created.
    assert!(fake.requests().iter().any(|r| r.starts_with("GET /files/file-")));
    let done = wait_for_job(&provider, &job.id, &poll(), |_| {}).await.unwrap();
    let model = done.state.model().unwrap();
    assert!(model.requires_deployment);
    assert!(model.metadata["deployment"].starts_with("required"));
    assert_eq!(model.loss_curve.validation_series().len(), 2);
    let provider = std::sync::Arc::new(provider);
    let answer = provider
        .chat_model("my-deployment")
        .chat(&ChatRequest::user("hello").with_max_tokens(8).with_stop("END"))
        .await
        .unwrap();
    assert_eq!(answer.text, "my-deployment says: hello");
    let body = fake.last_chat_body().unwrap();
    assert_eq!((body["max_tokens"].as_u64(), body["stop"][0].as_str()), (Some(8), Some("END")));
    let bad = spec.clone().with_suffix("has space");
    assert!(matches!(provider.validate(&bad).await.unwrap_err(), Error::InvalidInput { .. }));
    // A wrong api-version is refused by the service, with its param.
    let old = AzureOpenAiProvider::new(
        AzureOpenAiConfig::new(fake.url(), AzureCredential::ApiKey(Secret::new(KEY)))
            .with_api_version("2023-01-01")
            .with_http(fast_http()),
    )
    .unwrap();
    match old.job(&job.id).await.unwrap_err() {
        Error::Provider { status: Some(400), param, .. } => {
            assert_eq!(param.as_deref(), Some("api-version"))
        }
        e => panic!("{e}"),
    }
}

#[derive(Debug)]
struct StaticToken;

#[async_trait]
impl azure_core::credentials::TokenCredential for StaticToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        assert_eq!(scopes, ["https://cognitiveservices.azure.com/.default"]);
        Ok(azure_core::credentials::AccessToken::new(
            "entra-token-42".to_owned(),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

#[tokio::test]
async fn azure_with_an_entra_token() {
    let fake = FakeOpenAi::start(FakeFlavor::Azure, "entra-token-42").await;
    let config = AzureOpenAiConfig::new(fake.url(), AzureCredential::Entra(Arc::new(StaticToken)))
        .with_http(fast_http());
    let provider = AzureOpenAiProvider::new(config.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job = provider
        .submit(&JobSpec::new("gpt-4o-mini", write_dataset(dir.path(), "t.jsonl", 10)))
        .await
        .unwrap();
    assert!(!job.id.as_str().is_empty());
    assert!(!format!("{config:?}{provider:?}").contains("entra-token-42"));
}

#[test]
fn debug_of_connections_and_clients_shows_no_secret() {
    let openai = OpenAiConfig::new(Secret::new("sk-live-abcdef"))
        .with_base_url("https://gateway.example/v1");
    let provider = OpenAiProvider::new(openai.clone()).unwrap();
    let azure_config = AzureOpenAiConfig::new(
        "https://r.openai.azure.com",
        AzureCredential::ApiKey(Secret::new("az-key-123")),
    );
    let azure_provider = AzureOpenAiProvider::new(azure_config.clone()).unwrap();
    let shown = format!("{openai:?} {openai:#?} {provider:?} {azure_config:?} {azure_provider:#?}");
    for secret in ["sk-live-abcdef", "az-key-123"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("REDACTED") && shown.contains("gateway.example"));
}

#[test]
fn connections_make_providers() {
    let json = r#"{"name":"oai","fine_tuning_enabled":true,"settings":{"provider":"openai",
        "api_key":"sk-conn","base_url":"http://127.0.0.1:9/v1","organization":"org-1"}}"#;
    let conn: finetune_core::Connection = serde_json::from_str(json).unwrap();
    let provider = OpenAiProvider::from_connection(&conn).unwrap();
    assert_eq!(provider.base_url(), "http://127.0.0.1:9/v1");
    let err = AzureOpenAiProvider::from_connection(&conn).unwrap_err();
    assert!(err.to_string().contains("not Azure OpenAI"), "{err}");
    let json = r#"{"name":"az","settings":{"provider":"azure_openai","endpoint":"https://r.openai.azure.com",
        "api_version":"2025-01-01","auth":{"type":"api_key","key":"k"}}}"#;
    let conn: finetune_core::Connection = serde_json::from_str(json).unwrap();
    assert_eq!(AzureOpenAiConfig::from_connection(&conn).unwrap().api_version, "2025-01-01");
    assert!(
        OpenAiProvider::new(OpenAiConfig::new(Secret::new("k")).with_base_url("ftp://x")).is_err()
    );
}

struct Harness<P> {
    provider: P,
    fake: FakeOpenAi,
    dir: tempfile::TempDir,
}

#[async_trait]
impl<P: FineTuneProvider> ConformanceHarness for Harness<P> {
    fn provider(&self) -> &dyn FineTuneProvider {
        &self.provider
    }

    fn valid_spec(&self) -> JobSpec {
        JobSpec::new("gpt-4o-mini", write_dataset(self.dir.path(), "train.jsonl", 10))
            .with_validation(write_dataset(self.dir.path(), "valid.jsonl", 3))
    }

    fn invalid_spec(&self) -> JobSpec {
        self.valid_spec().with_hyperparameters(Hyperparameters {
            epochs: Setting::Value(51),
            ..Default::default()
        })
    }

    async fn uploads(&self) -> u64 {
        self.fake.uploads()
    }

    fn poll_policy(&self) -> PollPolicy {
        poll()
    }
}

#[tokio::test]
async fn both_providers_pass_the_conformance_suite() {
    let fake = FakeOpenAi::start(FakeFlavor::OpenAi, KEY).await;
    let harness =
        Harness { provider: openai(&fake.url()), fake, dir: tempfile::tempdir().unwrap() };
    let report = run_conformance(&harness).await.unwrap();
    assert_eq!(report.passed.len(), 4);

    let fake = FakeOpenAi::start(FakeFlavor::Azure, KEY).await;
    let harness = Harness { provider: azure(&fake.url()), fake, dir: tempfile::tempdir().unwrap() };
    let report = run_conformance(&harness).await.unwrap();
    assert_eq!(report.passed.len(), 4);
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried_and_headers_are_sent() {
    let fake = FakeOpenAi::start(FakeFlavor::OpenAi, KEY).await;
    let mut config = OpenAiConfig::new(Secret::new(KEY)).with_base_url(fake.url());
    config.organization = Some("org-42".into());
    config.project = Some("proj-7".into());
    let mut http = fast_http();
    http.timeout = Duration::from_millis(300);
    let provider = OpenAiProvider::new(config.with_http(http)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job = provider
        .submit(&JobSpec::new("gpt-4o-mini", write_dataset(dir.path(), "t.jsonl", 10)))
        .await
        .unwrap();
    fake.inject(Fault::slow(Method::GET, "/fine_tuning/jobs/*", Duration::from_secs(2)));
    let started = Instant::now();
    provider.job(&job.id).await.unwrap();
    let took = started.elapsed();
    println!("slow answer: timed out and retried {} time(s) in {took:?}", provider.retries());
    assert_eq!(provider.retries(), 1);
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(fake.last_org_project(), (Some("org-42".into()), Some("proj-7".into())));
}
