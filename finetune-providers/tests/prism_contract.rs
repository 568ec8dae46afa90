//! Contract tests: every request the OpenAI and Azure OpenAI clients send is
//! checked by Prism against the official API descriptions in
//! `specs/` (a request Prism's validation rejects is answered 422,
//! which fails the test), and every answer Prism makes up from the specs
//! must parse. Prism (`scripts/setup --test` installs it) is started here
//! on loopback.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use finetune_core::{
    DatasetSource, FineTuneProvider, Hyperparameters, JobId, JobSpec, LearningRate, ListJobs,
    Secret, Setting,
};
use finetune_providers::testing::{CutProxy, Prism};
use finetune_providers::{
    AzureCredential, AzureOpenAiConfig, AzureOpenAiProvider, ChatRequest, HttpSettings,
    OpenAiConfig, OpenAiProvider, RetryPolicy,
};

fn no_retries() -> HttpSettings {
    // A rejected request must show, not be retried away.
    HttpSettings {
        retry: RetryPolicy::none(),
        timeout: Duration::from_secs(60),
        ..HttpSettings::default()
    }
}

fn dataset(dir: &Path, name: &str, rows: usize) -> DatasetSource {
    let path = dir.join(name);
    let text: String = (0..rows)
        .map(|i| {
            format!(
                "{{\"prompt\":\"{i} + 1?\",\"completion\":\"{}\",\"system\":\"Be brief.\"}}\n",
                i + 1
            )
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    DatasetSource::new(path.to_str().unwrap()).unwrap()
}

/// Panics with Prism's log when it reported a validation problem.
fn assert_no_violation(prism: &Prism) {
    let log = prism.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            // A 422 status, not the digits inside a URL Prism echoes (its
            // mock data can put them in a query string).
            let status_422 =
                l.split_whitespace().filter(|w| !w.contains("://")).any(|w| w.contains("422"));
            l.contains("Request terminated") || l.contains("violation") || status_422
        })
        .collect();
    assert!(bad.is_empty(), "Prism saw invalid requests:\n{}", bad.join("\n"));
}

/// How many requests Prism validated and passed.
fn passed(prism: &Prism) -> usize {
    prism.log().matches("The request passed the validation rules").count()
}

/// A client through a proxy that cuts the first create: its retry first
/// looks the job up (OpenAI by metadata, Azure by listing), and that
/// lookup must satisfy the spec too.
fn with_one_retry() -> HttpSettings {
    HttpSettings {
        retry: RetryPolicy {
            max_retries: 1,
            initial_delay: Duration::from_millis(10),
            ..RetryPolicy::default()
        },
        ..no_retries()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_requests_satisfy_the_official_spec() {
    let prism = Prism::start(&Prism::spec("openai-openapi.yaml"));
    let provider = OpenAiProvider::new(
        OpenAiConfig::new(Secret::new("sk-contract"))
            .with_base_url(prism.url())
            .with_http(no_retries()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(dir.path(), "train.jsonl", 12);

    // Upload (multipart), then create without and with a validation file.
    let file = provider.upload(&train).await.unwrap();
    assert!(!file.id.is_empty());
    let plain = JobSpec::new("gpt-4o-mini-2024-07-18", train.clone());
    let job = provider.submit(&plain).await.unwrap();
    let full = plain
        .clone()
        .with_validation(dataset(dir.path(), "valid.jsonl", 3))
        .with_suffix("contract")
        .with_seed(3)
        .with_metadata("team", "qa")
        .with_hyperparameters(Hyperparameters {
            epochs: Setting::Value(2),
            batch_size: Setting::Value(4),
            learning_rate: Setting::Value(LearningRate::Multiplier(1.5)),
        });
    provider.submit(&full).await.unwrap();

    let id = JobId::new(job.id.as_str());
    provider.job(&id).await.unwrap();
    let page = provider.list_jobs(&ListJobs { limit: Some(5), after: None }).await.unwrap();
    assert!(!page.items.is_empty());
    provider
        .list_jobs(&ListJobs { limit: Some(5), after: Some("ftjob-abc".into()) })
        .await
        .unwrap();
    provider.events_page(&id, None, 10).await.unwrap();
    provider.events(&id).await.unwrap();
    provider.checkpoints(&id).await.unwrap();
    provider.metrics(&id).await.unwrap();
    provider.cancel(&id).await.unwrap();
    provider.pause(&id).await.unwrap();
    provider.resume(&id).await.unwrap();
    let request = ChatRequest::user("1 + 1?")
        .with_system("Be brief.")
        .with_max_tokens(8)
        .with_temperature(0.2)
        .with_top_p(0.9)
        .with_stop("\n\n")
        .with_seed(7);
    let provider = std::sync::Arc::new(provider);
    provider.chat_model("ft:gpt-4o-mini:org:contract:abc").chat(&request).await.unwrap();

    assert_no_violation(&prism);
    // Prism answers 401 to a request without credentials: the check is live.
    let status = reqwest_status(&format!("{}/fine_tuning/jobs", prism.url())).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_requests_satisfy_the_authoring_spec() {
    let prism = Prism::start(&Prism::spec(
        "azure-openai-authoring-2024-10-21.finetuning-excerpt.openai-prefixed.json",
    ));
    let provider = AzureOpenAiProvider::new(
        AzureOpenAiConfig::new(prism.url(), AzureCredential::ApiKey(Secret::new("az-contract")))
            .with_http(no_retries()),
    )
    .unwrap()
    .with_file_import_timeout(Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let train = dataset(dir.path(), "train.jsonl", 12);
    provider.upload(&train).await.unwrap();
    let plain = JobSpec::new("gpt-4o-mini-2024-07-18", train.clone());
    let job = provider.submit(&plain).await.unwrap();
    let full = plain
        .with_validation(dataset(dir.path(), "valid.jsonl", 3))
        .with_suffix("contract")
        .with_seed(3)
        .with_hyperparameters(Hyperparameters {
            epochs: Setting::Value(2),
            batch_size: Setting::Value(4),
            learning_rate: Setting::Value(LearningRate::Multiplier(1.5)),
        });
    provider.submit(&full).await.unwrap();
    let id = JobId::new(job.id.as_str());
    provider.job(&id).await.unwrap();
    provider.list_jobs(&ListJobs { limit: Some(5), after: None }).await.unwrap();
    provider.events(&id).await.unwrap();
    provider.checkpoints(&id).await.unwrap();
    provider.metrics(&id).await.unwrap();
    provider.cancel(&id).await.unwrap();

    let proxy = CutProxy::start(prism_addr(&prism)).await;
    let retrying = AzureOpenAiProvider::new(
        AzureOpenAiConfig::new(proxy.url(), AzureCredential::ApiKey(Secret::new("az-contract")))
            .with_http(with_one_retry()),
    )
    .unwrap()
    .with_file_import_timeout(Duration::from_secs(2));
    proxy.cut_next("POST /openai/fine_tuning/jobs", 10);
    retrying.submit(&full).await.unwrap();
    assert_eq!((proxy.cuts(), retrying.retries()), (1, 1));

    assert_no_violation(&prism);
    assert!(passed(&prism) >= 15, "{}", prism.log());
}

fn prism_addr(prism: &Prism) -> std::net::SocketAddr {
    prism.url().trim_start_matches("http://").parse().unwrap()
}

async fn reqwest_status(url: &str) -> u16 {
    // A bare request with no credentials, through the same HTTP stack.
    let client = reqwest::Client::new();
    client.get(url).send().await.unwrap().status().as_u16()
}
