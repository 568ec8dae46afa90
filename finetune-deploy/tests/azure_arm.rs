//! The Azure deployer: its ARM requests checked by Prism against the
//! deployments spec excerpt, and the lifecycle run through it against a
//! stateful fake of ARM with slow provisioning, failures and throttling.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use finetune_core::{FineTunedModel, LossCurve, ModelArtifacts, Secret};
use finetune_deploy::testing::{DeployerHarness, run_deployer_conformance};
use finetune_deploy::{
    ArmCredential, AzureDeployer, AzureDeployerConfig, Deployer, DeploymentSpec, DeploymentState,
    Lifecycle, LifecyclePolicy, MANAGED_TAG, NewVersion, Registry, WaitPolicy,
};
use finetune_providers::testing::Prism;
use finetune_providers::{HttpSettings, RetryPolicy};
use serde_json::{Value, json};

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
            "00000000-0000-0000-0000-000000000000",
            "rg-ft",
            "my-aoai",
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

/// A stateful fake of ARM's deployments of one account.
#[derive(Clone, Default)]
struct FakeArm {
    state: Arc<Mutex<Arm>>,
}

#[derive(Default)]
struct Arm {
    deployments: BTreeMap<String, (Value, u32)>,
    throttles: VecDeque<()>,
    requests: u64,
    /// Requests by method, throttled ones included.
    by_method: BTreeMap<String, u64>,
    lists: u64,
    /// Deployments per listing page (ARM pages with nextLink).
    page: usize,
    /// A nextLink to another host, to check it is not followed.
    foreign_next: bool,
}

async fn arm(State(fake): State<FakeArm>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bearer = parts.headers.get("authorization").and_then(|v| v.to_str().ok());
    if bearer != Some("Bearer arm-token") {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"code": "AuthenticationFailed", "message": "no token"}})),
        )
            .into_response();
    }
    if !parts.uri.query().unwrap_or("").contains("api-version=2024-10-01") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": {"code": "MissingApiVersionParameter", "message": "api-version"}}),
            ),
        )
            .into_response();
    }
    let path = parts.uri.path().to_owned();
    let prefix = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-ft/providers/Microsoft.CognitiveServices/accounts/my-aoai/deployments";
    let Some(rest) = path.strip_prefix(prefix) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let mut s = fake.state.lock().unwrap();
    s.requests += 1;
    *s.by_method.entry(parts.method.to_string()).or_default() += 1;
    if s.throttles.pop_front().is_some() {
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({"error": {"code": "TooManyRequests", "message": "slow down"}})),
        )
            .into_response();
        r.headers_mut().insert("retry-after", 0.into());
        return r;
    }
    let name = rest.trim_start_matches('/').to_owned();
    match (parts.method, name.is_empty()) {
        (Method::GET, true) => {
            s.lists += 1;
            let page = if s.page == 0 { usize::MAX } else { s.page };
            let skip: usize = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                .find(|(k, _)| k == "$skipToken")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let all: Vec<Value> = s.deployments.values().map(|(v, _)| v.clone()).collect();
            let value: Vec<Value> = all.iter().skip(skip).take(page).cloned().collect();
            let mut body = json!({"value": value});
            if skip.saturating_add(page) < all.len() {
                let host = parts.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("");
                let host = if s.foreign_next { "evil.example.com" } else { host };
                body["nextLink"] = format!(
                    "http://{host}{prefix}?api-version=2024-10-01&$skipToken={}",
                    skip + page
                )
                .into();
            }
            axum::Json(body).into_response()
        }
        (Method::PUT, false) => {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if body["properties"]["model"]["format"] != "OpenAI" || body["sku"]["name"].as_str().is_none() {
                return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"code": "InvalidPayload", "message": "bad body"}}))).into_response();
            }
            if let Some((v, _)) = s.deployments.get(&name) {
                return axum::Json(v.clone()).into_response();
            }
            let fails = body["properties"]["model"]["name"].as_str().unwrap_or("").contains("fail");
            let v = json!({
                "id": format!("{prefix}/{name}"), "name": name, "type": "Microsoft.CognitiveServices/accounts/deployments",
                "sku": body["sku"], "tags": body["tags"],
                "properties": {"model": body["properties"]["model"], "provisioningState": "Creating"},
            });
            s.deployments.insert(name, (v.clone(), if fails { u32::MAX } else { 2 }));
            (StatusCode::CREATED, axum::Json(v)).into_response()
        }
        (Method::GET, false) => match s.deployments.get_mut(&name) {
            Some((v, polls)) => {
                if v["properties"]["provisioningState"] == "Creating" {
                    if *polls == u32::MAX {
                        v["properties"]["provisioningState"] = "Failed".into();
                    } else if *polls <= 1 {
                        v["properties"]["provisioningState"] = "Succeeded".into();
                    } else {
                        *polls -= 1;
                    }
                }
                axum::Json(v.clone()).into_response()
            }
            None => (StatusCode::NOT_FOUND, axum::Json(json!({"error": {"code": "DeploymentNotFound", "message": "no such deployment"}}))).into_response(),
        },
        (Method::DELETE, false) => match s.deployments.remove(&name) {
            Some(_) => StatusCode::ACCEPTED.into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        },
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

async fn start_fake() -> (FakeArm, String) {
    let fake = FakeArm::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(arm).with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
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
        fake.state.lock().unwrap().throttles.push_back(());
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
    fake.state.lock().unwrap().page = 2;
    let d = deployer(&url, "arm-token", true);
    for i in 0..5 {
        d.create(&spec(&format!("ft-page-{i}"), "gpt-4o-mini-2024-07-18.ft-p")).await.unwrap();
    }
    let mut unmanaged = spec("theirs", "gpt-4o-mini-2024-07-18.ft-p");
    unmanaged.tags.clear();
    d.create(&unmanaged).await.unwrap();
    let before = fake.state.lock().unwrap().lists;
    let listed = d.list_managed().await.unwrap();
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert_eq!(fake.state.lock().unwrap().lists - before, 3, "three pages of two");
    // A nextLink to another host is refused rather than sent our token.
    fake.state.lock().unwrap().foreign_next = true;
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
    fake.state.lock().unwrap().throttles.extend(std::iter::repeat_n((), 1000));
    let err = lc.register_version("bot", version("gpt-4o-mini-2024-07-18.ft-1")).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    // The create is one PUT plus the client's 6 retries, not multiplied by
    // a second retry layer in the lifecycle.
    let puts = fake.state.lock().unwrap().by_method.get("PUT").copied();
    assert_eq!(puts, Some(1 + 6));
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
        let v = json!({
            "id": format!("/deployments/{name}"), "name": name,
            "sku": {"name": "Standard", "capacity": 1}, "tags": {},
            "properties": {"model": {"format": "OpenAI", "name": "gpt-4o-mini", "version": "1"},
                           "provisioningState": "Succeeded"},
        });
        self.fake.state.lock().unwrap().deployments.insert(name.to_owned(), (v, 0));
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
