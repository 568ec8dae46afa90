//! The Bedrock provider against moto's S3 and the stateful fake of
//! Bedrock's control plane: a job that completes with its loss curve read
//! from the metrics CSVs in the moto bucket, one that fails in validation,
//! one that is stopped, throttling storms and a lost create answer that
//! leave exactly one job, multipart uploads and reuse, hyperparameters
//! refused before any upload, Converse on a deployed model, the conformance
//! suite, and CreateModelCustomizationJob accepted by moto itself.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use finetune_core::testing::{ConformanceHarness, run_conformance};
use finetune_core::{
    DatasetSource, Error, FineTuneProvider, Hyperparameters, JobSpec, JobState, LearningRate,
    ListJobs, PollPolicy, Setting, wait_for_job,
};
use finetune_providers::testing::{FakeBedrock, Fault, Method, Moto};
use finetune_providers::{BedrockConfig, BedrockProvider, ChatRequest};
use object_store::ObjectStoreExt;
use support::write_dataset;

const ROLE: &str = "arn:aws:iam::123456789012:role/bedrock-finetune";
const TITAN: &str = "amazon.titan-text-lite-v1:0:4k";
const NOVA: &str = "amazon.nova-micro-v1:0:128k";

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

struct Setup {
    fake: FakeBedrock,
    store: Arc<dyn object_store::ObjectStore>,
    bucket: String,
    dir: tempfile::TempDir,
}

async fn setup(bucket: &str) -> Setup {
    let moto = moto();
    moto.create_bucket(bucket).await;
    let store = moto.store(bucket);
    let fake = FakeBedrock::start(store.clone(), bucket).await;
    Setup { fake, store, bucket: bucket.to_owned(), dir: tempfile::tempdir().unwrap() }
}

impl Setup {
    fn config(&self) -> BedrockConfig {
        BedrockConfig::new(ROLE, &format!("s3://{}/finetune", self.bucket))
            .unwrap()
            .with_sdk_config(Moto::sdk_config())
            .with_endpoint_url(self.fake.url())
            .with_s3_endpoint_url(moto().endpoint())
            .with_retries(8, Duration::from_millis(5))
    }

    async fn provider(&self) -> BedrockProvider {
        BedrockProvider::new(self.config()).await.unwrap()
    }

    async fn objects(&self) -> Vec<String> {
        use futures_util::StreamExt;
        let mut keys = Vec::new();
        let mut listing = self.store.list(None);
        while let Some(meta) = listing.next().await {
            keys.push(meta.unwrap().location.to_string());
        }
        keys
    }
}

fn poll() -> PollPolicy {
    PollPolicy::fixed(Duration::from_millis(5), Duration::from_secs(60))
}

fn titan_spec(dir: &Path) -> JobSpec {
    JobSpec::new(TITAN, write_dataset(dir, "train.jsonl", 12))
        .with_validation(write_dataset(dir, "valid.jsonl", 4))
        .with_hyperparameters(Hyperparameters {
            epochs: Setting::Value(2),
            batch_size: Setting::Value(4),
            learning_rate: Setting::Value(LearningRate::Absolute(1e-5)),
        })
}

#[tokio::test]
async fn a_job_completes_with_its_loss_curve_from_the_metrics_csvs() {
    let s = setup("bedrock-complete").await;
    let provider = s.provider().await;
    let mut spec = titan_spec(s.dir.path());
    spec.suffix = Some("numbers".into());
    spec.metadata.insert("team".into(), "search".into());
    spec.extras.insert("learningRateWarmupSteps".into(), serde_json::json!(3));
    let job = provider.submit(&spec).await.unwrap();
    assert_eq!(job.base_model, TITAN);
    assert!(matches!(job.state, JobState::Validating), "{:?}", job.state);

    // The request as Bedrock received it.
    let request = s.fake.job_request(job.id.as_str()).unwrap();
    assert_eq!(request["customizationType"], "FINE_TUNING");
    assert_eq!(request["roleArn"], ROLE);
    assert_eq!(request["baseModelIdentifier"], TITAN);
    assert_eq!(
        request["hyperParameters"],
        serde_json::json!({"epochCount": "2", "batchSize": "4", "learningRate": "0.00001", "learningRateWarmupSteps": "3"})
    );
    assert!(request["customModelName"].as_str().unwrap().starts_with("numbers-"));
    assert!(request["clientRequestToken"].as_str().unwrap().starts_with("finetune"));
    let training_uri = request["trainingDataConfig"]["s3Uri"].as_str().unwrap();
    assert!(training_uri.starts_with("s3://bedrock-complete/finetune/data/"), "{training_uri}");
    assert!(request["validationDataConfig"]["validators"][0]["s3Uri"].is_string());
    assert_eq!(request["outputDataConfig"]["s3Uri"], "s3://bedrock-complete/finetune/output");
    let tags = request["jobTags"].as_array().unwrap();
    assert!(tags.iter().any(|t| t["key"] == "team" && t["value"] == "search"));

    // The uploaded data is prompt/completion JSONL, system before the prompt.
    let key = training_uri.strip_prefix("s3://bedrock-complete/").unwrap();
    let uploaded = s.store.get(&key.into()).await.unwrap().bytes().await.unwrap();
    let first: serde_json::Value =
        serde_json::from_slice(uploaded.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert!(first["prompt"].as_str().unwrap().contains("What is 0 plus one?"), "{first}");
    assert_eq!(first["completion"], "1");

    let mut states = Vec::new();
    let done =
        wait_for_job(&provider, &job.id, &poll(), |st| states.push(st.to_string())).await.unwrap();
    assert!(states.iter().any(|s| s.starts_with("running")), "{states:?}");
    let JobState::Succeeded { model } = done.state else { panic!("{:?}", done.state) };
    assert!(model.requires_deployment);
    assert!(model.model_id.contains(":custom-model/"), "{}", model.model_id);
    assert_eq!(model.metadata.get("custom_model_status").map(String::as_str), Some("Active"));
    let details = provider.custom_model(&model.model_id).await.unwrap();
    assert_eq!(details.base_model, TITAN);
    assert_eq!(details.hyperparameters.get("epochCount").map(String::as_str), Some("2"));
    // 12 rows × 2 epochs / batch 4 = 6 steps, each in the CSV; two epochs
    // of validation loss.
    let curve = &model.loss_curve;
    assert_eq!(curve.train_series().len(), 6, "{curve:?}");
    assert_eq!(curve.validation_series().len(), 2, "{curve:?}");
    let train = curve.train_series();
    assert!(train.first().unwrap().1 > train.last().unwrap().1, "the loss falls: {train:?}");
    let metrics_keys: Vec<String> =
        s.objects().await.into_iter().filter(|k| k.ends_with("metrics.csv")).collect();
    assert_eq!(metrics_keys.len(), 2, "{metrics_keys:?}");
    assert_eq!(provider.metrics(&job.id).await.unwrap(), *curve);
    println!(
        "bedrock: {} states seen, {} training points, {} validation points",
        states.len(),
        train.len(),
        curve.validation_series().len()
    );

    // The same datasets again: nothing is uploaded twice.
    let uploads = provider.uploads();
    let again = provider.submit(&spec).await.unwrap();
    assert_eq!(provider.uploads(), uploads);
    let listed = provider.list_jobs(&ListJobs { limit: Some(1), after: None }).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].id, again.id, "newest first");
    let next =
        provider.list_jobs(&ListJobs { limit: Some(1), after: listed.next.clone() }).await.unwrap();
    assert_eq!(next.items[0].id, job.id);
    assert!(matches!(next.items[0].state, JobState::Succeeded { .. }));
}

#[tokio::test]
async fn bad_training_data_fails_the_job_with_the_line_named() {
    let s = setup("bedrock-failed").await;
    let provider = s.provider().await;
    // Data put on S3 by hand, not through our converter.
    let bad = "{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"question\":\"no\"}\n";
    s.store.put(&"hand/bad.jsonl".into(), bad.as_bytes().to_vec().into()).await.unwrap();
    let spec = JobSpec::new(TITAN, write_dataset(s.dir.path(), "train.jsonl", 3));
    let arn = provider.create_job(&spec, "s3://bedrock-failed/hand/bad.jsonl", None).await.unwrap();
    let done =
        wait_for_job(&provider, &finetune_core::JobId::new(arn), &poll(), |_| {}).await.unwrap();
    match done.state {
        JobState::Failed { reason, .. } => assert!(reason.contains("line 2"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    // Data the role cannot read is refused at create.
    let err =
        provider.create_job(&spec, "s3://bedrock-failed/missing.jsonl", None).await.unwrap_err();
    assert!(err.to_string().contains("no such object"), "{err}");
}

#[tokio::test]
async fn a_stopped_job_ends_stopped() {
    let s = setup("bedrock-stopped").await;
    let provider = s.provider().await;
    let job = provider.submit(&titan_spec(s.dir.path())).await.unwrap();
    let state = provider.cancel(&job.id).await.unwrap();
    assert!(matches!(state, JobState::Cancelled | JobState::Cancelling), "{state:?}");
    let done = wait_for_job(&provider, &job.id, &poll(), |_| {}).await.unwrap();
    assert_eq!(done.state, JobState::Cancelled);
    // A stopped job cannot be stopped again.
    assert!(provider.cancel(&job.id).await.is_err());
}

#[tokio::test]
async fn throttling_storms_and_a_lost_answer_leave_exactly_one_job() {
    let s = setup("bedrock-storm").await;
    let provider = s.provider().await;
    for _ in 0..5 {
        s.fake.inject(Fault::throttle(Method::POST, "/model-customization-jobs"));
    }
    let job = provider.submit(&titan_spec(s.dir.path())).await.unwrap();
    println!(
        "throttling storm: {} faults, {} create requests, {} job(s)",
        s.fake.injected(),
        s.fake.create_requests(),
        s.fake.job_count()
    );
    assert_eq!(s.fake.injected(), 5);
    assert_eq!(s.fake.create_requests(), 6, "five throttled, one accepted");
    assert_eq!(s.fake.job_count(), 1);
    // Throttled reads are ridden out too.
    for _ in 0..3 {
        s.fake.inject(Fault::throttle(Method::GET, "/model-customization-jobs/*"));
    }
    wait_for_job(&provider, &job.id, &poll(), |_| {}).await.unwrap();

    // The job is made but the answer is lost: the SDK retries with the
    // same clientRequestToken and gets the same job back.
    let s = setup("bedrock-lost").await;
    let provider = s.provider().await;
    s.fake.inject(Fault::internal(Method::POST, "/model-customization-jobs").committed());
    provider.submit(&titan_spec(s.dir.path())).await.unwrap();
    println!(
        "lost create answer: {} create requests, {} job(s)",
        s.fake.create_requests(),
        s.fake.job_count()
    );
    assert_eq!(s.fake.create_requests(), 2);
    assert_eq!(s.fake.job_count(), 1);

    // The SDK gives up (one attempt) after the job was made: the provider
    // finds it by name rather than failing or creating another.
    let s = setup("bedrock-giveup").await;
    let provider =
        BedrockProvider::new(s.config().with_retries(1, Duration::from_millis(5))).await.unwrap();
    s.fake.inject(Fault::internal(Method::POST, "/model-customization-jobs").committed());
    let job = provider.submit(&titan_spec(s.dir.path())).await.unwrap();
    assert_eq!(s.fake.create_requests(), 1);
    assert_eq!(s.fake.job_count(), 1);
    assert!(job.id.as_str().contains(":model-customization-job/"));
}

#[tokio::test]
async fn invalid_hyperparameters_are_refused_before_any_upload() {
    let s = setup("bedrock-invalid").await;
    let provider = s.provider().await;
    let cases: Vec<(JobSpec, &str)> = vec![
        (
            titan_spec(s.dir.path()).with_hyperparameters(Hyperparameters {
                epochs: Setting::Value(11),
                ..Default::default()
            }),
            "hyperparameters.epochs",
        ),
        (
            titan_spec(s.dir.path()).with_hyperparameters(Hyperparameters {
                batch_size: Setting::Value(65),
                ..Default::default()
            }),
            "hyperparameters.batch_size",
        ),
        (
            JobSpec::new(NOVA, write_dataset(s.dir.path(), "t.jsonl", 3)).with_hyperparameters(
                Hyperparameters {
                    learning_rate: Setting::Value(LearningRate::Absolute(1e-3)),
                    ..Default::default()
                },
            ),
            "hyperparameters.learning_rate",
        ),
        (
            JobSpec::new(NOVA, write_dataset(s.dir.path(), "t.jsonl", 3)).with_hyperparameters(
                Hyperparameters { batch_size: Setting::Value(2), ..Default::default() },
            ),
            "hyperparameters.batch_size",
        ),
        (
            JobSpec::new(
                "anthropic.claude-3-haiku-20240307-v1:0:200k",
                write_dataset(s.dir.path(), "t.jsonl", 3),
            ),
            "base_model",
        ),
    ];
    for (spec, field) in cases {
        let err = provider.submit(&spec).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    let mut warm = titan_spec(s.dir.path());
    warm.extras.insert("learningRateWarmupSteps".into(), serde_json::json!(251));
    assert!(
        provider
            .submit(&warm)
            .await
            .unwrap_err()
            .to_string()
            .contains("extras.learningRateWarmupSteps")
    );
    assert_eq!(provider.uploads(), 0);
    assert!(s.objects().await.is_empty(), "nothing reached S3");
    assert!(s.fake.requests().is_empty(), "nothing reached Bedrock: {:?}", s.fake.requests());
}

#[tokio::test]
async fn large_files_go_up_in_parts_and_once() {
    let s = setup("bedrock-multipart").await;
    let provider = BedrockProvider::new(s.config().with_part_size(5 << 20)).await.unwrap();
    // About 12 MiB of prompt/completion JSONL.
    let path = s.dir.path().join("big.jsonl");
    let filler = "x".repeat(1000);
    let mut text = String::new();
    for i in 0..12_000 {
        text.push_str(&format!("{{\"prompt\":\"{i} {filler}\",\"completion\":\"{i}\"}}\n"));
    }
    std::fs::write(&path, text).unwrap();
    let source = DatasetSource::new(path.to_str().unwrap()).unwrap();
    let format = provider.rules_for(TITAN).unwrap().format;
    let up = provider.upload(&source, "training", format).await.unwrap();
    println!("multipart: {} bytes in {} parts", up.bytes, up.parts);
    assert_eq!(up.parts, 3, "{up:?}");
    assert_eq!(up.rows, 12_000);
    let key = up.uri.strip_prefix("s3://bedrock-multipart/").unwrap();
    assert_eq!(s.store.head(&key.into()).await.unwrap().size, up.bytes);
    let again = provider.upload(&source, "training", format).await.unwrap();
    assert_eq!(again.parts, 0, "reused");
    assert_eq!(again.uri, up.uri);
    assert_eq!(provider.uploads(), 1);
}

#[tokio::test]
async fn nova_trains_on_conversations_and_answers_once_deployed() {
    let s = setup("bedrock-converse").await;
    let provider = s.provider().await;
    let spec = JobSpec::new(NOVA, write_dataset(s.dir.path(), "train.jsonl", 8));
    let job = provider.submit(&spec).await.unwrap();
    let request = s.fake.job_request(job.id.as_str()).unwrap();
    let key = request["trainingDataConfig"]["s3Uri"]
        .as_str()
        .unwrap()
        .strip_prefix("s3://bedrock-converse/")
        .unwrap()
        .to_owned();
    let uploaded = s.store.get(&key.as_str().into()).await.unwrap().bytes().await.unwrap();
    let first: serde_json::Value =
        serde_json::from_slice(uploaded.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["schemaVersion"], "bedrock-conversation-2024");
    assert_eq!(first["system"][0]["text"], "Answer in words.");

    let done = wait_for_job(&provider, &job.id, &poll(), |_| {}).await.unwrap();
    let JobState::Succeeded { model } = done.state else { panic!("{:?}", done.state) };
    let ask = ChatRequest::user("one two three").with_system("Be brief.").with_max_tokens(32);
    let provider = std::sync::Arc::new(provider);
    let err = provider.chat_model(&model.model_id).chat(&ask).await.unwrap_err();
    assert!(err.to_string().contains("deployed"), "{err}");

    let control = provider.control_client();
    let arn = control
        .create_custom_model_deployment()
        .model_deployment_name("numbers")
        .model_arn(&model.model_id)
        .send()
        .await
        .unwrap()
        .custom_model_deployment_arn()
        .to_owned();
    loop {
        let d = control
            .get_custom_model_deployment()
            .custom_model_deployment_identifier(&arn)
            .send()
            .await
            .unwrap();
        if d.status().as_str() == "Active" {
            break;
        }
    }
    let answer = provider.chat_model(&arn).chat(&ask).await.unwrap();
    assert_eq!(answer.text, "[numbers] eerht owt eno");
    assert_eq!(answer.finish_reason, finetune_core::FinishReason::Stop);
    assert_eq!((answer.usage.prompt_tokens, answer.usage.completion_tokens), (3, 4));
}

struct Harness {
    provider: BedrockProvider,
    fake: FakeBedrock,
    dir: tempfile::TempDir,
    _bucket: String,
}

#[async_trait]
impl ConformanceHarness for Harness {
    fn provider(&self) -> &dyn FineTuneProvider {
        &self.provider
    }

    fn valid_spec(&self) -> JobSpec {
        titan_spec(self.dir.path())
    }

    fn invalid_spec(&self) -> JobSpec {
        self.valid_spec().with_hyperparameters(Hyperparameters {
            learning_rate: Setting::Value(LearningRate::Absolute(2.0)),
            ..Default::default()
        })
    }

    async fn uploads(&self) -> u64 {
        self.provider.uploads()
    }

    fn poll_policy(&self) -> PollPolicy {
        poll()
    }
}

#[tokio::test]
async fn bedrock_passes_the_conformance_suite() {
    let s = setup("bedrock-conformance").await;
    let provider = s.provider().await;
    let harness = Harness { provider, fake: s.fake.clone(), dir: s.dir, _bucket: s.bucket };
    let report = run_conformance(&harness).await.unwrap();
    assert_eq!(report.passed.len(), 4);
    assert!(harness.fake.job_count() >= 2);
}

/// moto's Bedrock accepts our CreateModelCustomizationJob and keeps what we
/// sent (its reads carry timestamps the SDK rejects, so the job is read
/// back raw).
#[tokio::test]
async fn moto_accepts_our_create_request() {
    let moto = moto();
    moto.create_bucket("bedrock-moto").await;
    let dir = tempfile::tempdir().unwrap();
    let config = BedrockConfig::new(ROLE, "s3://bedrock-moto/ft")
        .unwrap()
        .with_sdk_config(Moto::sdk_config())
        .with_endpoint_url(moto.endpoint())
        .with_s3_endpoint_url(moto.endpoint());
    let provider = BedrockProvider::new(config).await.unwrap();
    let spec = titan_spec(dir.path());
    let train = provider
        .upload(&spec.training, "training", finetune_providers::BedrockDataFormat::PromptCompletion)
        .await
        .unwrap();
    let valid = provider
        .upload(
            spec.validation.as_ref().unwrap(),
            "validation",
            finetune_providers::BedrockDataFormat::PromptCompletion,
        )
        .await
        .unwrap();
    let arn = provider.create_job(&spec, &train.uri, Some(&valid.uri)).await.unwrap();
    assert!(arn.contains("model-customization-job"), "{arn}");
    let name = arn.rsplit('/').next().unwrap();
    let raw: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/model-customization-jobs/{name}", moto.endpoint()))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=0",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["baseModelArn"].as_str().map(|a| a.ends_with(TITAN)), Some(true), "{raw}");
    assert_eq!(raw["hyperParameters"]["epochCount"], "2", "{raw}");
    assert_eq!(raw["trainingDataConfig"]["s3Uri"], train.uri.as_str());
    assert_eq!(raw["validationDataConfig"]["validators"][0]["s3Uri"], valid.uri.as_str());
    assert_eq!(raw["outputDataConfig"]["s3Uri"], "s3://bedrock-moto/ft/output");
}

#[tokio::test]
async fn debug_shows_no_secret() {
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;
    let sdk = aws_config::SdkConfig::builder()
        .region(aws_config::Region::new("eu-west-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKIAEXAMPLEKEYID",
            "wJalrXUtnFEMI-very-secret",
            Some("session-token-secret".into()),
            None,
            "test",
        )))
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    let config = BedrockConfig::new(ROLE, "s3://some-bucket/p").unwrap().with_sdk_config(sdk);
    let provider = BedrockProvider::new(config.clone()).await.unwrap();
    for shown in [format!("{config:?}"), format!("{provider:?}")] {
        assert!(shown.contains("some-bucket"), "{shown}");
        for secret in ["wJalrXUtnFEMI-very-secret", "session-token-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
