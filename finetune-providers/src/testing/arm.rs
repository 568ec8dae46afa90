//! A stateful fake of Azure Resource Manager's deployments of one Azure
//! OpenAI account (what `finetune-deploy`'s Azure deployer calls): PUT is
//! create-or-update, provisioning takes two looks (a model whose name
//! contains `fail` fails), listings page with `nextLink`, and the shared
//! fault core throttles or delays requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::fake_server::{FakeCore, Fault, loopback, serve};

/// The subscription the fake serves.
pub const ARM_SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000000";
/// The resource group the fake serves.
pub const ARM_RESOURCE_GROUP: &str = "rg-ft";
/// The Azure OpenAI account the fake serves.
pub const ARM_ACCOUNT: &str = "my-aoai";
/// The ARM API version the fake wants.
pub const ARM_API_VERSION: &str = "2024-10-01";

#[derive(Debug, Default)]
struct Arm {
    /// By name: the deployment as ARM shows it, and looks left until ready
    /// (`u32::MAX`: it will fail).
    deployments: BTreeMap<String, (Value, u32)>,
    lists: u64,
    /// Deployments per listing page; all in one when 0.
    page: usize,
    /// Send a nextLink to another host, which must not be followed.
    foreign_next: bool,
}

/// The fake ARM; clones share it.
#[derive(Debug, Clone)]
pub struct FakeArm {
    state: Arc<Mutex<Arm>>,
    core: Arc<FakeCore>,
    token: String,
    addr: SocketAddr,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

fn deployments_path() -> String {
    format!(
        "/subscriptions/{ARM_SUBSCRIPTION}/resourceGroups/{ARM_RESOURCE_GROUP}/providers/\
         Microsoft.CognitiveServices/accounts/{ARM_ACCOUNT}/deployments"
    )
}

impl FakeArm {
    /// Starts the fake on a free loopback port, accepting `Bearer {token}`.
    pub async fn start(token: &str) -> Self {
        let (listener, addr) = loopback().await;
        let fake =
            Self { state: Arc::default(), core: Arc::default(), token: token.to_owned(), addr };
        serve(listener, axum::Router::new().fallback(handle).with_state(fake.clone()));
        fake
    }

    /// The endpoint to configure (`https://management.azure.com` in life).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Arm> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a fault for the next matching request.
    pub fn inject(&self, fault: Fault) {
        self.core.inject(fault);
    }

    /// Throttles the next `n` requests (429 with `Retry-After: 0`).
    pub fn throttle_next(&self, n: usize) {
        for _ in 0..n {
            self.inject(Fault::any(429).with_code("TooManyRequests").retry_after(0.0));
        }
    }

    /// Every authenticated request seen, as `METHOD /path`, throttled ones
    /// included.
    pub fn requests(&self) -> Vec<String> {
        self.core.requests()
    }

    /// Authenticated requests with `method`, throttled ones included.
    pub fn requests_with(&self, method: &Method) -> usize {
        let prefix = format!("{method} ");
        self.requests().iter().filter(|r| r.starts_with(&prefix)).count()
    }

    /// Listing pages answered.
    pub fn lists(&self) -> u64 {
        self.lock().lists
    }

    /// Pages listings by `n` deployments (0: one page).
    pub fn set_page_size(&self, n: usize) {
        self.lock().page = n;
    }

    /// Makes listings send a `nextLink` to another host.
    pub fn send_foreign_next_link(&self) {
        self.lock().foreign_next = true;
    }

    /// Adds a ready deployment made outside the library (no tags).
    pub fn add_unmanaged(&self, name: &str, model: &str) {
        let v = json!({
            "id": format!("{}/{name}", deployments_path()), "name": name,
            "type": "Microsoft.CognitiveServices/accounts/deployments",
            "sku": {"name": "Standard", "capacity": 1}, "tags": {},
            "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"},
                           "provisioningState": "Succeeded"},
        });
        self.lock().deployments.insert(name.to_owned(), (v, 0));
    }
}

async fn handle(State(fake): State<FakeArm>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bearer = parts.headers.get("authorization").and_then(|v| v.to_str().ok());
    if bearer != Some(format!("Bearer {}", fake.token).as_str()) {
        return error(StatusCode::UNAUTHORIZED, "AuthenticationFailed", "no token");
    }
    if !parts.uri.query().unwrap_or("").contains(&format!("api-version={ARM_API_VERSION}")) {
        return error(StatusCode::BAD_REQUEST, "MissingApiVersionParameter", "api-version");
    }
    let path = parts.uri.path().to_owned();
    let prefix = deployments_path();
    let Some(rest) = path.strip_prefix(&prefix) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let name = rest.trim_start_matches('/').to_owned();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    fake.core.record(&parts.method, &path);
    let host = parts.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let route = async { route(&fake, &parts.method, &name, &query, &host, &bytes) };
    let fault_error = |f: &Fault| {
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response =
            error(status, f.code.as_deref().unwrap_or("InternalServerError"), "injected failure");
        f.add_retry_after(&mut response);
        response
    };
    fake.core.answer(&parts.method, &path, route, fault_error).await
}

fn route(
    fake: &FakeArm,
    method: &Method,
    name: &str,
    query: &str,
    host: &str,
    body: &[u8],
) -> Response {
    let prefix = deployments_path();
    let mut s = fake.lock();
    match (method, name.is_empty()) {
        (&Method::GET, true) => {
            s.lists += 1;
            let page = if s.page == 0 { usize::MAX } else { s.page };
            let skip: usize = url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "$skipToken")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let all: Vec<Value> = s.deployments.values().map(|(v, _)| v.clone()).collect();
            let value: Vec<Value> = all.iter().skip(skip).take(page).cloned().collect();
            let mut answer = json!({"value": value});
            if skip.saturating_add(page) < all.len() {
                let host = if s.foreign_next { "evil.example.com" } else { host };
                answer["nextLink"] = format!(
                    "http://{host}{prefix}?api-version={ARM_API_VERSION}&$skipToken={}",
                    skip + page
                )
                .into();
            }
            axum::Json(answer).into_response()
        }
        (&Method::PUT, false) => {
            let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            if body["properties"]["model"]["format"] != "OpenAI"
                || body["sku"]["name"].as_str().is_none()
            {
                return error(StatusCode::BAD_REQUEST, "InvalidPayload", "bad body");
            }
            if let Some((v, _)) = s.deployments.get(name) {
                return axum::Json(v.clone()).into_response();
            }
            let fails = body["properties"]["model"]["name"].as_str().unwrap_or("").contains("fail");
            let v = json!({
                "id": format!("{prefix}/{name}"), "name": name,
                "type": "Microsoft.CognitiveServices/accounts/deployments",
                "sku": body["sku"], "tags": body["tags"],
                "properties": {"model": body["properties"]["model"], "provisioningState": "Creating"},
            });
            s.deployments.insert(name.to_owned(), (v.clone(), if fails { u32::MAX } else { 2 }));
            (StatusCode::CREATED, axum::Json(v)).into_response()
        }
        (&Method::GET, false) => match s.deployments.get_mut(name) {
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
            None => error(StatusCode::NOT_FOUND, "DeploymentNotFound", "no such deployment"),
        },
        (&Method::DELETE, false) => match s.deployments.remove(name) {
            Some(_) => StatusCode::ACCEPTED.into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        },
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}
