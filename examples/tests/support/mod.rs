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

/// An example's binary: the one `cargo test` built beside this test, or,
/// when that one is missing, older than a source file of the workspace, or
/// (for `finetune_local`, whose behaviour they change) built without this
/// test's features, one cargo builds now with them. Checked once per test
/// process. Never a rebuild the normal way: `cargo build` from here makes a
/// second copy of every binary (another profile's hash), which a full CI
/// target cannot afford, and a featureless one would train alone.
pub(crate) fn example_binary(name: &str) -> PathBuf {
    static CHECKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::current_exe().unwrap().parent().and_then(Path::parent).unwrap().to_owned();
    let binary = dir.join("examples").join(name);
    let mut checked = CHECKED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !checked.iter().any(|b| b == name) {
        if let Some(why) = rebuild_reason(&binary, name) {
            eprintln!("building example {name}: {why}");
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
            // Into the folder this test runs from: `debug` is the dev
            // profile's, any other (`release`) its profile's own.
            let profile = match dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => "dev",
                Some(other) => other,
            };
            let status = Command::new(env!("CARGO"))
                .args(["build", "-q", "--profile", profile, "--manifest-path"])
                .arg(&manifest)
                .args(["--example", name])
                .args(["--features", &finetune_examples::features().join(",")])
                .status()
                .unwrap();
            assert!(status.success(), "cargo build --example {name}: {status}");
        }
        checked.push(name.to_owned());
    }
    binary
}

/// Why the binary cannot be used as it is, if it cannot.
fn rebuild_reason(binary: &Path, name: &str) -> Option<String> {
    let Ok(built) = std::fs::metadata(binary).and_then(|m| m.modified()) else {
        return Some("not built yet".to_owned());
    };
    if let Some((path, changed)) = newest_source()
        && *changed > built
    {
        return Some(format!("{} changed after it was built", path.display()));
    }
    if name == "finetune_local" {
        let out = Command::new(binary).arg("--version").output().unwrap();
        let version = String::from_utf8_lossy(&out.stdout);
        let missing: Vec<_> =
            finetune_examples::features().into_iter().filter(|f| !version.contains(f)).collect();
        if !out.status.success() || !missing.is_empty() {
            return Some(format!("built without {missing:?} ({})", version.trim()));
        }
    }
    None
}

/// The most recently changed source file of the workspace's crates (their
/// sources, manifests and build scripts, and Cargo.lock), read once per
/// test process.
fn newest_source() -> Option<&'static (PathBuf, std::time::SystemTime)> {
    static NEWEST: std::sync::OnceLock<Option<(PathBuf, std::time::SystemTime)>> =
        std::sync::OnceLock::new();
    NEWEST
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
            let mut pending = vec![root.join("Cargo.lock")];
            for member in [
                "finetune-core",
                "finetune-data",
                "finetune-providers",
                "finetune-local",
                "finetune-deploy",
                "finetune-build",
                "examples",
            ] {
                let member = root.join(member);
                pending
                    .extend(["src", "examples", "Cargo.toml", "build.rs"].map(|p| member.join(p)));
            }
            let mut newest: Option<(PathBuf, std::time::SystemTime)> = None;
            while let Some(path) = pending.pop() {
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                if meta.is_dir() {
                    pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                } else if let Ok(changed) = meta.modified()
                    && newest.as_ref().is_none_or(|(_, t)| changed > *t)
                {
                    newest = Some((path, changed));
                }
            }
            newest
        })
        .as_ref()
}
