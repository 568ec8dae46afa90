//! The Azure deployer: its ARM requests checked by Prism against the
//! deployments spec excerpt, and the lifecycle run through it against a
//! stateful fake of ARM with slow provisioning, failures and throttling.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use chrono::Utc;
use finetune_core::{FineTunedModel, LossCurve, ModelArtifacts, Secret};
use finetune_deploy::testing::{DeployerHarness, run_deployer_conformance};
use finetune_deploy::{
    ArmCredential, AzureDeployer, AzureDeployerConfig, Deployer, DeploymentSpec, DeploymentState,
    Lifecycle, LifecyclePolicy, MANAGED_TAG, NewVersion, Registry, WaitPolicy,
};
use finetune_providers::testing::{
    ARM_ACCOUNT, ARM_RESOURCE_GROUP, ARM_SUBSCRIPTION, FakeArm, Prism,
};
use finetune_providers::{HttpSettings, RetryPolicy};

fn http() -> HttpSettings {
    HttpSettings {
        retry: RetryPolicy {
            max_retries: 6,
            initial_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            jitter: true,
            max_retry_after: Duration::from_millis(200),
        },
        ..HttpSettings::default()
    }
}

fn deployer(endpoint: &str, token: &str, retries: bool) -> AzureDeployer {
    let mut settings = http();
    if !retries {
        settings.retry = RetryPolicy::none();
    }
    AzureDeployer::new(
        AzureDeployerConfig::new(
            ARM_SUBSCRIPTION,
            ARM_RESOURCE_GROUP,
            ARM_ACCOUNT,
            ArmCredential::Token(Secret::new(token)),
        )
        .with_endpoint(endpoint)
        .with_http(settings),
    )
    .unwrap()
}

fn spec(name: &str, model: &str) -> DeploymentSpec {
    let mut tags = BTreeMap::new();
    tags.insert(MANAGED_TAG.to_owned(), "true".to_owned());
    DeploymentSpec {
        name: name.into(),
        model_id: model.into(),
        sku: "Standard".into(),
        capacity: 1,
        tags,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn arm_requests_satisfy_the_deployments_spec() {
    let prism = Prism::start(&Prism::spec("azure-cognitiveservices-arm-deployments-excerpt.json"));
    let d = deployer(prism.url(), "arm-token", false);
    d.create(&spec("ft-bot-v1", "gpt-4o-mini-2024-07-18.ft-abc")).await.unwrap();
    d.get("ft-bot-v1").await.unwrap();
    d.list_managed().await.unwrap();
    d.delete("ft-bot-v1").await.unwrap();
    let log = prism.log();
    assert!(log.matches("The request passed the validation rules").count() >= 4, "{log}");
    for bad in ["Violation: request", "UNPROCESSABLE_ENTITY", "Request terminated"] {
        assert!(!log.contains(bad), "{log}");
    }
    assert!(format!("{d:?}").contains("REDACTED") && !format!("{d:?}").contains("arm-token"));
}

async fn start_fake() -> (FakeArm, String) {
    let fake = FakeArm::start("arm-token").await;
    let url = fake.url();
    (fake, url)
}

fn version(id: &str) -> NewVersion {
    NewVersion::of(FineTunedModel {
        provider: "azure_openai".into(),
        model_id: id.into(),
        base_model: "gpt-4o-mini-2024-07-18".into(),
        job_id: None,
        created_at: Utc::now(),
        requires_deployment: true,
        artifacts: ModelArtifacts::Remote { id: id.into() },
        loss_curve: LossCurve::new(),
        metadata: Default::default(),
    })
}

#[tokio::test]
async fn the_lifecycle_through_arm_with_slow_provisioning_failures_and_throttling() {
    let (fake, url) = start_fake().await;
    let d = Arc::new(deployer(&url, "arm-token", true));
    let registry = Registry::in_memory();
    let lc = Lifecycle::new(registry.clone(), d.clone())
        .with_wait(WaitPolicy { interval: Duration::from_millis(5), ..WaitPolicy::immediate() });
    lc.create_model("bot", LifecyclePolicy::default()).await.unwrap();
    lc.register_version("bot", version("gpt-4o-mini-2024-07-18.ft-1")).await.unwrap();
    for _ in 0..3 {
        fake.throttle_next(1);
    }
    lc.register_version("bot", version("gpt-4o-mini-2024-07-18.ft-2")).await.unwrap();
    let head = lc.activate("bot", 2).await.unwrap();
    assert_eq!(head.active_deployment.as_deref(), Some("ft-bot-v2"));
    assert_eq!(d.retries(), 3);
    let live = d.list_managed().await.unwrap();
    assert_eq!(live.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), vec!["ft-bot-v2"]);
    assert_eq!(live[0].state, DeploymentState::Ready);
    assert_eq!(live[0].model_id, "gpt-4o-mini-2024-07-18.ft-2");

    // A version whose deployment fails is cleaned up, and the previous
    // deployment keeps serving.
    lc.register_version("bot", version("gpt-4o-mini-2024-07-18.ft-fail")).await.unwrap();
    let err = lc.activate("bot", 3).await.unwrap_err();
    assert!(err.to_string().contains("Failed"), "{err}");
    let ids: Vec<String> = d.list_managed().await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(ids, vec!["ft-bot-v2".to_owned()]);
    let head = registry.head("bot").await.unwrap();
    assert_eq!(
        (head.active_version, head.active_deployment.as_deref()),
        (Some(2), Some("ft-bot-v2"))
    );

    // Wrong credentials are an authentication error, not retried.
    let bad = deployer(&url, "wrong", true);
    let err = bad.get("ft-bot-v2").await.unwrap_err();
    assert!(matches!(err, finetune_core::Error::Authentication { .. }), "{err}");
    assert_eq!(bad.retries(), 0);
    assert!(d.get("nope").await.unwrap().is_none());
    d.delete("nope").await.unwrap();
}

#[tokio::test]
async fn listings_follow_next_link_on_the_same_host_only() {
    let (fake, url) = start_fake().await;
    fake.set_page_size(2);
    let d = deployer(&url, "arm-token", true);
    for i in 0..5 {
        d.create(&spec(&format!("ft-page-{i}"), "gpt-4o-mini-2024-07-18.ft-p")).await.unwrap();
    }
    let mut unmanaged = spec("theirs", "gpt-4o-mini-2024-07-18.ft-p");
    unmanaged.tags.clear();
    d.create(&unmanaged).await.unwrap();
    let before = fake.lists();
    let listed = d.list_managed().await.unwrap();
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert_eq!(fake.lists() - before, 3, "three pages of two");
    // A nextLink to another host is refused rather than sent our token.
    fake.send_foreign_next_link();
    let err = d.list_managed().await.unwrap_err();
    assert!(err.to_string().contains("not followed"), "{err}");
}

#[tokio::test]
async fn one_arm_call_makes_at_most_the_configured_attempts() {
    let (fake, url) = start_fake().await;
    let d = Arc::new(deployer(&url, "arm-token", true));
    let lc = Lifecycle::new(Registry::in_memory(), d.clone())
        .with_wait(WaitPolicy { interval: Duration::from_millis(5), ..WaitPolicy::immediate() });
    lc.create_model("bot", LifecyclePolicy::default()).await.unwrap();
    // ARM throttles every request from now on.
    fake.throttle_next(1000);
    let err = lc.register_version("bot", version("gpt-4o-mini-2024-07-18.ft-1")).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    // The create is one PUT plus the client's 6 retries, not multiplied by
    // a second retry layer in the lifecycle.
    assert_eq!(fake.requests_with(&Method::PUT), 1 + 6);
}

struct ArmHarness {
    deployer: AzureDeployer,
    fake: FakeArm,
}

#[async_trait::async_trait]
impl DeployerHarness for ArmHarness {
    fn deployer(&self) -> &dyn Deployer {
        &self.deployer
    }

    async fn add_unmanaged(&self, name: &str) -> String {
        self.fake.add_unmanaged(name, "gpt-4o-mini");
        name.to_owned()
    }
}

#[tokio::test]
async fn the_azure_deployer_passes_the_deployer_conformance_suite() {
    let (fake, url) = start_fake().await;
    let harness = ArmHarness { deployer: deployer(&url, "arm-token", true), fake };
    let report = run_deployer_conformance(&harness).await.unwrap();
    assert_eq!(report.passed.len(), 5, "{report:?}");
}

/// A connection says what it lacks to deploy: ARM's coordinates, or an
/// Entra credential (ARM takes no api key).
#[tokio::test]
async fn a_connection_that_cannot_deploy_says_why() {
    use finetune_core::{AzureAuth, AzureOpenAiSettings, Connection, ConnectionSettings, Secret};
    let key = AzureAuth::ApiKey { key: Secret::new("k") };
    let settings = AzureOpenAiSettings::new("https://contoso.openai.azure.com", key)
        .with_resource("sub", "rg", "contoso");
    let conn = Connection::new("aoai-key", ConnectionSettings::AzureOpenAi(settings));
    let err = finetune_deploy::deployer_for(&conn).await.unwrap_err().to_string();
    assert!(err.contains("aoai-key") && err.contains("Entra"), "{err}");

    let token = AzureAuth::StaticToken { token: Secret::new("t") };
    let settings = AzureOpenAiSettings::new("https://contoso.openai.azure.com", token);
    let conn = Connection::new("aoai-nowhere", ConnectionSettings::AzureOpenAi(settings));
    let err = finetune_deploy::deployer_for(&conn).await.unwrap_err().to_string();
    assert!(err.contains("subscription_id"), "{err}");

    let local = Connection::new(
        "box",
        ConnectionSettings::LocalHf(finetune_core::LocalHfSettings::default()),
    );
    assert!(finetune_deploy::deployer_for(&local).await.unwrap().is_none());
}
