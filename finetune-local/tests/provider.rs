//! The local provider passes the core conformance suite on a tiny model,
//! and its jobs write what they promise.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use finetune_core::testing::{ConformanceHarness, run_conformance};
use finetune_core::{
    DatasetSource, Error, FineTuneProvider, Hyperparameters, JobSpec, JobState, LearningRate,
    ModelArtifacts, PollPolicy, Setting, wait_for_job,
};
use finetune_local::{LocalProvider, ModelCache, Runtime};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama")
}

struct Harness {
    provider: LocalProvider,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, rows: usize, offset: usize| {
            let mut text = String::new();
            for i in 0..rows {
                let n = i + offset;
                let system =
                    if n.is_multiple_of(3) { r#","system":"Answer briefly.""# } else { "" };
                text.push_str(&format!(
                    "{{\"prompt\":\"What is {n} plus one?\",\"completion\":\"{}\"{system}}}\n",
                    n + 1
                ));
            }
            std::fs::write(dir.path().join(name), text).unwrap();
        };
        write("train.jsonl", 12, 0);
        write("valid.jsonl", 4, 100);
        let runtime = Runtime {
            device: Some(finetune_local::tch::Device::Cpu),
            output_root: dir.path().join("jobs"),
            cache: ModelCache::at(dir.path().join("cache")),
            ..Runtime::default()
        };
        Self { provider: LocalProvider::new(runtime), dir }
    }

    fn spec(&self) -> JobSpec {
        let path =
            |name: &str| DatasetSource::new(self.dir.path().join(name).to_str().unwrap()).unwrap();
        JobSpec::new(model_dir().to_str().unwrap(), path("train.jsonl"))
            .with_validation(path("valid.jsonl"))
            .with_seed(3)
            .with_hyperparameters(Hyperparameters {
                epochs: Setting::Value(2),
                batch_size: Setting::Value(4),
                learning_rate: Setting::Value(LearningRate::Absolute(1e-3)),
            })
            .with_extra("lora_r", 4)
            .with_extra("max_length", 128)
            .with_extra("packing", true)
            .with_extra("gradient_checkpointing", "selective")
    }
}

#[async_trait]
impl ConformanceHarness for Harness {
    fn provider(&self) -> &dyn FineTuneProvider {
        &self.provider
    }

    fn valid_spec(&self) -> JobSpec {
        self.spec()
    }

    fn invalid_spec(&self) -> JobSpec {
        // A model id that is in no cache.
        let mut spec = self.spec();
        spec.base_model = "acme/no-such-model".into();
        spec
    }

    async fn uploads(&self) -> u64 {
        self.provider.datasets_read()
    }

    fn poll_policy(&self) -> PollPolicy {
        PollPolicy::fixed(Duration::from_millis(5), Duration::from_secs(300))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_provider_passes_the_conformance_suite() {
    let harness = Harness::new();
    let report = run_conformance(&harness).await.unwrap();
    assert_eq!(report.passed.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_writes_the_adapter_merged_model_metrics_and_graph() {
    let harness = Harness::new();
    let spec = harness.spec().with_extra("merge", true).with_extra("eval_every", 2);
    let job = harness.provider.submit(&spec).await.unwrap();
    let policy = PollPolicy::fixed(Duration::from_millis(20), Duration::from_secs(300));
    let done = wait_for_job(&harness.provider, &job.id, &policy, |_| {}).await.unwrap();
    let JobState::Succeeded { model } = &done.state else { panic!("{}", done.state) };
    let ModelArtifacts::LocalDir { path } = &model.artifacts else { panic!() };
    assert!(path.join("model.safetensors").is_file(), "{}", path.display());
    let out = PathBuf::from(&model.metadata["output_dir"]);
    for file in [
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "merged/config.json",
        "merged/tokenizer.json",
        "metrics.jsonl",
        "loss.svg",
        "loss.png",
        "summary.json",
    ] {
        assert!(out.join(file).is_file(), "{file} is missing");
    }
    // 12 examples, batch 4, 2 epochs; validation every 2 steps and at
    // each epoch's end.
    let curve = &model.loss_curve;
    assert_eq!(curve.train_series().len(), 6);
    assert_eq!(curve.validation_series().iter().map(|p| p.0).collect::<Vec<_>>(), vec![2, 3, 4, 6]);
    // The merged model loads and generates.
    let merged = finetune_local::CausalLm::load(path, &Default::default()).unwrap();
    assert_eq!(merged.config().architecture, finetune_local::Architecture::Llama);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_name_their_field() {
    let harness = Harness::new();
    let cases = [
        (harness.spec().with_extra("lora_rank", 4), "extras.lora_rank"),
        (harness.spec().with_extra("method", "qlora"), "extras.method"),
        (harness.spec().with_extra("schedule", "step"), "extras.schedule"),
        (
            harness.spec().with_extra("gradient_checkpointing", "partial"),
            "extras.gradient_checkpointing",
        ),
        (
            harness.spec().with_hyperparameters(Hyperparameters {
                learning_rate: Setting::Value(LearningRate::Multiplier(2.0)),
                ..Hyperparameters::default()
            }),
            "learning_rate",
        ),
        (
            JobSpec::new(
                model_dir().to_str().unwrap(),
                DatasetSource::new("/nonexistent/train.jsonl").unwrap(),
            ),
            "training",
        ),
    ];
    for (spec, field) in cases {
        match harness.provider.validate(&spec).await {
            Err(e @ Error::InvalidInput { .. }) => {
                assert!(e.to_string().contains(field), "{e} does not name {field}")
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    assert_eq!(harness.provider.datasets_read(), 0);
}
