//! The peers and connections the cross-provider tests share: the
//! stateful fakes of OpenAI (behind Prism, validating against the official
//! spec), Azure OpenAI and its ARM, Bedrock with moto's S3, and the local
//! fixture model; one enabled connection per kind.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use finetune_core::{
    AzureAuth, AzureOpenAiSettings, BedrockSettings, Connection, ConnectionSettings, DatasetSource,
    LocalHfSettings, OpenAiSettings, Providers, Secret,
};
use finetune_local::LocalFactory;
use finetune_providers::testing::{
    ARM_ACCOUNT, ARM_RESOURCE_GROUP, ARM_SUBSCRIPTION, FakeArm, FakeBedrock, FakeFlavor,
    FakeOpenAi, Moto, Prism,
};
use finetune_providers::{AzureOpenAiFactory, BedrockFactory, OpenAiFactory};

pub(crate) const KEY: &str = "test-key-4k";

/// Every factory of the workspace.
pub(crate) fn providers() -> Providers {
    Providers::new()
        .with(OpenAiFactory::default())
        .with(AzureOpenAiFactory::default().with_file_import_timeout(Duration::from_secs(30)))
        .with(BedrockFactory::default())
        .with(LocalFactory::default())
}

/// `rows` rows of the "plus one" task from `offset`, as JSON Lines.
pub(crate) fn dataset(dir: &Path, name: &str, rows: usize, offset: usize) -> DatasetSource {
    let path = dir.join(name);
    let text: String = (offset..offset + rows)
        .map(|n| {
            let system = if n % 4 == 0 { r#","system":"Answer with a number.""# } else { "" };
            format!(
                "{{\"prompt\":\"What is {n} plus one?\",\"completion\":\"{}\"{system}}}\n",
                n + 1
            )
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    DatasetSource::new(path.to_str().unwrap()).unwrap()
}

pub(crate) fn local_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../finetune-local/tests/fixtures/models/llama")
}

/// A connection of one kind, and the base model its platform offers.
pub(crate) struct Kind {
    pub(crate) connection: Connection,
    pub(crate) base_model: String,
}

fn enabled(name: &str, settings: ConnectionSettings) -> Connection {
    Connection::new(name, settings).with_fine_tuning_enabled(true)
}

/// The running peers.
pub(crate) struct Peers {
    pub(crate) openai: FakeOpenAi,
    pub(crate) prism: Prism,
    pub(crate) azure: FakeOpenAi,
    pub(crate) arm: FakeArm,
    pub(crate) moto: Moto,
    pub(crate) bedrock: FakeBedrock,
}

impl Peers {
    pub(crate) async fn start(bucket: &str) -> Self {
        let openai = FakeOpenAi::start(FakeFlavor::OpenAi, KEY).await;
        let prism = Prism::proxy(&Prism::spec("openai-openapi.yaml"), &openai.url());
        let azure = FakeOpenAi::start(FakeFlavor::Azure, KEY).await;
        let arm = FakeArm::start(KEY).await;
        let moto = Moto::start();
        moto.create_bucket(bucket).await;
        let bedrock = FakeBedrock::start(moto.store(bucket), bucket).await;
        Self { openai, prism, azure, arm, moto, bedrock }
    }

    /// Requests the remote fakes have seen.
    pub(crate) fn requests(&self) -> (usize, usize, usize) {
        (self.openai.requests().len(), self.azure.requests().len(), self.bedrock.requests().len())
    }

    /// One connection per kind (the local one writing under `dir`): all
    /// that differs between the kinds.
    pub(crate) fn kinds(&self, bucket: &str, dir: &Path) -> Vec<Kind> {
        vec![
            Kind {
                connection: enabled(
                    "oai",
                    ConnectionSettings::OpenAi(
                        OpenAiSettings::new(Secret::new(KEY)).with_base_url(self.prism.url()),
                    ),
                ),
                base_model: "gpt-4o-mini-2024-07-18".into(),
            },
            Kind {
                connection: enabled(
                    "aoai",
                    ConnectionSettings::AzureOpenAi(
                        AzureOpenAiSettings::new(
                            self.azure.url(),
                            AzureAuth::StaticToken { token: Secret::new(KEY) },
                        )
                        .with_resource(ARM_SUBSCRIPTION, ARM_RESOURCE_GROUP, ARM_ACCOUNT)
                        .with_arm_endpoint(self.arm.url()),
                    ),
                ),
                base_model: "gpt-4o-mini-2024-07-18".into(),
            },
            Kind {
                connection: enabled(
                    "aws",
                    ConnectionSettings::Bedrock(
                        BedrockSettings::new(
                            "us-east-1",
                            "arn:aws:iam::123456789012:role/ft",
                            format!("s3://{bucket}/ft"),
                        )
                        .with_endpoints(
                            self.bedrock.url(),
                            self.bedrock.url(),
                            self.moto.endpoint(),
                        )
                        .with_static_credentials("testing", Secret::new("testing")),
                    ),
                ),
                base_model: "amazon.titan-text-lite-v1:0:4k".into(),
            },
            Kind {
                connection: enabled(
                    "gpu-box",
                    ConnectionSettings::LocalHf(
                        LocalHfSettings::new(dir.join("jobs"))
                            .with_cache_dir(dir.join("cache"))
                            .with_device("auto")
                            .with_threads(2),
                    ),
                ),
                base_model: local_model().to_str().unwrap().to_owned(),
            },
        ]
    }

    /// Asserts that every request that went through Prism, and the fake's
    /// answer to it, satisfied the official OpenAI spec.
    pub(crate) fn assert_openai_spec_held(&self) {
        let log = self.prism.log();
        let exchanges: Vec<&str> = log.split("Request received").skip(1).collect();
        assert!(exchanges.len() >= 5, "{log}");
        for exchange in exchanges {
            // The spec declares `application/json` for a file's raw content,
            // which the service sends as plain bytes: the one answer not
            // held to the spec's media type.
            if exchange.contains("/content has returned") {
                continue;
            }
            for bad in ["Violation", "UNPROCESSABLE_ENTITY", "Request terminated"] {
                assert!(!exchange.contains(bad), "{exchange}");
            }
        }
    }
}

/// An example's binary, built by cargo with the features this test was
/// built with, once per test process. Cargo's own freshness check decides
/// whether anything is compiled (after `cargo test` built the examples, it
/// is not): a binary's age says nothing about the features it has, and one
/// built without them (`distributed`) would train alone.
pub(crate) fn example_binary(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::current_exe().unwrap().parent().and_then(Path::parent).unwrap().to_owned();
    let binary = dir.join("examples").join(name);
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !built.iter().any(|b| b == name) {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "--manifest-path"])
            .arg(&manifest)
            .args(["--example", name])
            .args(["--features", &binary_features().join(",")])
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example {name}: {status}");
        built.push(name.to_owned());
    }
    binary
}

fn binary_features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if cfg!(feature = "kubernetes") {
        features.push("kubernetes");
    }
    if cfg!(feature = "distributed") {
        features.push("distributed");
    }
    features
}
