//! A stateful fake of the OpenAI and Azure OpenAI fine-tuning APIs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::fake_server::{FakeCore, Fault, loopback, serve};

/// Which API the fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeFlavor {
    /// OpenAI: `/files`, `/fine_tuning/jobs`, Bearer keys.
    OpenAi,
    /// Azure OpenAI: `/openai/...?api-version=…`, `api-key` or Entra bearer
    /// tokens, `pending` status, asynchronous file import.
    Azure,
}

/// What the fake holds and has seen.
#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    clock: i64,
    files: BTreeMap<String, FakeFile>,
    jobs: Vec<FakeJob>,
    /// `OpenAI-Organization` and `OpenAI-Project` of the last request.
    org_project: (Option<String>, Option<String>),
    uploads: u64,
    /// The body of the last chat completion request.
    last_chat: Option<Value>,
}

#[derive(Debug, Clone)]
struct FakeFile {
    id: String,
    filename: String,
    purpose: String,
    content: Vec<u8>,
    status: String,
    created_at: i64,
}

#[derive(Debug, Clone)]
struct FakeJob {
    id: String,
    model: String,
    training_file: String,
    validation_file: Option<String>,
    suffix: Option<String>,
    seed: Option<i64>,
    metadata: Option<BTreeMap<String, String>>,
    hyperparameters: Value,
    status: String,
    created_at: i64,
    finished_at: Option<i64>,
    step: u64,
    total_steps: u64,
    events: Vec<Value>,
    result_file: Option<String>,
    fine_tuned_model: Option<String>,
    error: Option<Value>,
}

/// The fake server. Jobs move one step each time they are read: validating
/// (OpenAI `validating_files`, Azure `pending`) → `running` steps 1‥N, each
/// with a metrics event (validation loss every other step when there is a
/// validation file) → `succeeded` with a result-file CSV (base64 on OpenAI,
/// as OpenAI serves it) and checkpoints. A base model whose name contains
/// `will-fail` fails after validation. Requests are checked as the API
/// would: authentication, required fields, files that exist with purpose
/// `fine-tune`, every line of an uploaded file a chat example, Azure's
/// `api-version`, numeric-only hyperparameters and suffix rules.
#[derive(Debug, Clone)]
pub struct FakeOpenAi {
    inner: Arc<Mutex<Inner>>,
    core: Arc<FakeCore>,
    flavor: FakeFlavor,
    key: String,
    api_version: String,
    steps: u64,
    addr: SocketAddr,
}

impl FakeOpenAi {
    /// Starts a fake on a free loopback port, accepting `key` (as a Bearer
    /// key on OpenAI; as `api-key` or Bearer token on Azure). Azure wants
    /// `api-version=2024-10-21`.
    pub async fn start(flavor: FakeFlavor, key: &str) -> Self {
        Self::start_with(flavor, key, "2024-10-21", 4).await
    }

    /// Like [`FakeOpenAi::start`], with the API version Azure wants and the
    /// number of training steps of every job.
    pub async fn start_with(flavor: FakeFlavor, key: &str, api_version: &str, steps: u64) -> Self {
        let (listener, addr) = loopback().await;
        let fake = Self {
            inner: Arc::new(Mutex::new(Inner {
                // The fake's clock starts at the real time and ticks a
                // second per event.
                clock: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
                ..Inner::default()
            })),
            core: Arc::default(),
            flavor,
            key: key.to_owned(),
            api_version: api_version.to_owned(),
            steps: steps.max(1),
            addr,
        };
        serve(listener, axum::Router::new().fallback(handle).with_state(fake.clone()));
        fake
    }

    /// The URL to configure: the OpenAI base URL, or the Azure endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a fault for the next matching request.
    pub fn inject(&self, fault: Fault) {
        self.core.inject(fault);
    }

    /// Faults answered so far.
    pub fn injected(&self) -> u64 {
        self.core.injected()
    }

    /// Jobs that exist.
    pub fn job_count(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Files that exist.
    pub fn file_count(&self) -> usize {
        self.lock().files.values().filter(|f| f.purpose == "fine-tune").count()
    }

    /// Completed uploads.
    pub fn uploads(&self) -> u64 {
        self.lock().uploads
    }

    /// The `OpenAI-Organization` and `OpenAI-Project` headers of the last
    /// request.
    pub fn last_org_project(&self) -> (Option<String>, Option<String>) {
        self.lock().org_project.clone()
    }

    /// Every request seen, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.core.requests()
    }

    /// The content of a stored file.
    pub fn file_content(&self, id: &str) -> Option<Vec<u8>> {
        self.lock().files.get(id).map(|f| f.content.clone())
    }

    /// The body of the last chat completion request, as sent.
    pub fn last_chat_body(&self) -> Option<Value> {
        self.lock().last_chat.clone()
    }

    /// The hyperparameters a job was created with, as sent.
    pub fn job_hyperparameters(&self, id: &str) -> Option<Value> {
        self.lock().jobs.iter().find(|j| j.id == id).map(|j| j.hyperparameters.clone())
    }
}

fn error(status: StatusCode, code: &str, message: &str, param: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}});
    (status, axum::Json(body)).into_response()
}

fn created(flavor: FakeFlavor) -> StatusCode {
    match flavor {
        FakeFlavor::OpenAi => StatusCode::OK,
        FakeFlavor::Azure => StatusCode::CREATED,
    }
}

async fn handle(State(fake): State<FakeOpenAi>, request: Request) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let headers = request.headers().clone();
    let query: BTreeMap<String, String> = uri
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let mut path = uri.path().to_owned();
    if fake.flavor == FakeFlavor::Azure {
        match path.strip_prefix("/openai") {
            Some(rest) => path = rest.to_owned(),
            None => return error(StatusCode::NOT_FOUND, "notFound", "no such route", None),
        }
        if query.get("api-version") != Some(&fake.api_version) {
            return error(
                StatusCode::BAD_REQUEST,
                "invalidPayload",
                "missing or unsupported api-version",
                Some("api-version"),
            );
        }
    }
    {
        let header =
            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        fake.core.record(&method, &path);
        fake.lock().org_project = (header("openai-organization"), header("openai-project"));
    }
    if !authorized(&fake, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Incorrect API key provided",
            None,
        );
    }
    let route = route(&fake, &method, &path, &query, request);
    fake.core.answer(&method, &path, route, fault_response).await
}

fn fault_response(fault: &Fault) -> Response {
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let code = fault.code.as_deref().unwrap_or("injected");
    let mut response = error(status, code, "injected failure", None);
    fault.add_retry_after(&mut response);
    response
}

fn authorized(fake: &FakeOpenAi, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let api_key = headers.get("api-key").and_then(|v| v.to_str().ok());
    match fake.flavor {
        FakeFlavor::OpenAi => bearer == Some(fake.key.as_str()),
        FakeFlavor::Azure => {
            api_key == Some(fake.key.as_str()) || bearer == Some(fake.key.as_str())
        }
    }
}

async fn route(
    fake: &FakeOpenAi,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    request: Request,
) -> Response {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.clone(), segments.as_slice()) {
        (Method::POST, ["files"]) => upload(fake, request).await,
        (Method::GET, ["files"]) => list_files(fake, query),
        (Method::GET, ["files", id]) => get_file(fake, id),
        (Method::GET, ["files", id, "content"]) => match fake.file_content(id) {
            Some(content) => (StatusCode::OK, Body::from(content)).into_response(),
            None => error(StatusCode::NOT_FOUND, "not_found", "No such file", Some("file_id")),
        },
        (Method::POST, ["fine_tuning", "jobs"]) => {
            let bytes = match axum::body::to_bytes(request.into_body(), 1 << 20).await {
                Ok(b) => b,
                Err(_) => {
                    return error(StatusCode::BAD_REQUEST, "invalid_body", "unreadable body", None);
                }
            };
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(body) => create_job(fake, &body),
                Err(_) => {
                    error(StatusCode::BAD_REQUEST, "invalid_json", "the body is not JSON", None)
                }
            }
        }
        (Method::GET, ["fine_tuning", "jobs"]) => list_jobs(fake, query),
        (Method::GET, ["fine_tuning", "jobs", id]) => {
            let mut inner = fake.lock();
            match inner.jobs.iter().position(|j| j.id == *id) {
                Some(i) => {
                    advance(fake, &mut inner, i);
                    let job = inner.jobs[i].clone();
                    axum::Json(job_json(fake.flavor, &job)).into_response()
                }
                None => not_found_job(),
            }
        }
        (Method::GET, ["fine_tuning", "jobs", id, "events"]) => events(fake, id, query),
        (Method::GET, ["fine_tuning", "jobs", id, "checkpoints"]) => checkpoints(fake, id),
        (Method::POST, ["fine_tuning", "jobs", id, action @ ("cancel" | "pause" | "resume")]) => {
            job_action(fake, id, action)
        }
        (Method::POST, ["chat", "completions"]) if fake.flavor == FakeFlavor::OpenAi => {
            chat(fake, None, request).await
        }
        (Method::POST, ["deployments", deployment, "chat", "completions"])
            if fake.flavor == FakeFlavor::Azure =>
        {
            chat(fake, Some(deployment), request).await
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such route", None),
    }
}

fn not_found_job() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "fine_tune_not_found",
        "No such fine-tuning job",
        Some("fine_tuning_job_id"),
    )
}

fn next_id(inner: &mut Inner, prefix: &str) -> String {
    inner.next_id += 1;
    format!("{prefix}-{:06}", inner.next_id)
}

fn tick(inner: &mut Inner) -> i64 {
    inner.clock += 1;
    inner.clock
}

async fn upload(fake: &FakeOpenAi, request: Request) -> Response {
    let mut multipart = match axum::extract::Multipart::from_request(request, &()).await {
        Ok(m) => m,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "expected multipart/form-data",
                None,
            );
        }
    };
    let mut purpose = None;
    let mut file = None;
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or("").to_owned();
                let filename = field.file_name().map(str::to_owned);
                // A connection dropped mid-upload ends here, storing nothing.
                let Ok(data) = field.bytes().await else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "the upload broke off",
                        None,
                    );
                };
                match name.as_str() {
                    "purpose" => purpose = Some(String::from_utf8_lossy(&data).into_owned()),
                    "file" => file = Some((filename.unwrap_or_default(), data.to_vec())),
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the upload broke off",
                    None,
                );
            }
        }
    }
    let (Some(purpose), Some((filename, content))) = (purpose, file) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "purpose and file are required",
            None,
        );
    };
    if filename.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the file has no name",
            Some("file"),
        );
    }
    let lines_ok = std::str::from_utf8(&content).is_ok_and(|text| {
        text.lines().filter(|l| !l.trim().is_empty()).all(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v.get("messages").and_then(Value::as_array).is_some_and(|m| {
                    m.iter().all(|msg| msg.get("role").is_some() && msg.get("content").is_some())
                        && m.iter().any(|msg| msg["role"] == "assistant")
                })
            })
        })
    });
    let mut inner = fake.lock();
    let id = next_id(&mut inner, "file");
    let status = match (fake.flavor, lines_ok) {
        (_, false) => "error",
        (FakeFlavor::OpenAi, true) => "processed",
        (FakeFlavor::Azure, true) => "pending",
    };
    let file = FakeFile {
        id: id.clone(),
        filename,
        purpose,
        content,
        status: status.into(),
        created_at: tick(&mut inner),
    };
    inner.uploads += 1;
    let body = file_json(&file);
    inner.files.insert(id, file);
    (created(fake.flavor), axum::Json(body)).into_response()
}

fn file_json(f: &FakeFile) -> Value {
    let mut v = json!({
        "object": "file", "id": f.id, "bytes": f.content.len(), "created_at": f.created_at,
        "filename": f.filename, "purpose": f.purpose, "status": f.status,
    });
    if f.status == "error" {
        v["status_details"] = "line 1: not a chat example".into();
    }
    v
}

fn list_files(fake: &FakeOpenAi, query: &BTreeMap<String, String>) -> Response {
    let inner = fake.lock();
    let data: Vec<Value> = inner
        .files
        .values()
        .rev()
        .filter(|f| query.get("purpose").is_none_or(|p| *p == f.purpose))
        .map(file_json)
        .collect();
    let mut body = json!({"object": "list", "data": data.clone()});
    if fake.flavor == FakeFlavor::OpenAi {
        // The spec's ListFilesResponse requires both ids (null-free: an
        // empty list has none to give, so it sends empty strings).
        let id = |v: Option<&Value>| v.and_then(|f| f["id"].as_str()).unwrap_or("").to_owned();
        body["first_id"] = id(data.first()).into();
        body["last_id"] = id(data.last()).into();
        body["has_more"] = false.into();
    }
    axum::Json(body).into_response()
}

fn get_file(fake: &FakeOpenAi, id: &str) -> Response {
    let mut inner = fake.lock();
    match inner.files.get_mut(id) {
        Some(f) => {
            // Azure finishes importing by the time it is looked at again.
            if f.status == "pending" {
                f.status = "processed".into();
            }
            axum::Json(file_json(f)).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "not_found", "No such file", Some("file_id")),
    }
}

fn create_job(fake: &FakeOpenAi, body: &Value) -> Response {
    let bad = |message: &str, param: &str| {
        error(StatusCode::BAD_REQUEST, "invalid_request", message, Some(param))
    };
    let Some(object) = body.as_object() else { return bad("the body must be an object", "body") };
    let allowed: &[&str] = match fake.flavor {
        FakeFlavor::OpenAi => &[
            "model",
            "training_file",
            "validation_file",
            "suffix",
            "seed",
            "method",
            "metadata",
            "hyperparameters",
            "integrations",
        ],
        FakeFlavor::Azure => {
            &["model", "training_file", "validation_file", "suffix", "seed", "hyperparameters"]
        }
    };
    if let Some(key) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return bad(&format!("unknown parameter {key}"), key);
    }
    let Some(model) = body["model"].as_str().filter(|m| !m.is_empty()) else {
        return bad("model is required", "model");
    };
    let file_ok = |inner: &Inner, id: &str| {
        inner.files.get(id).is_some_and(|f| f.purpose == "fine-tune" && f.status == "processed")
    };
    let Some(training) = body["training_file"].as_str() else {
        return bad("training_file is required", "training_file");
    };
    let validation = body.get("validation_file").and_then(Value::as_str).map(str::to_owned);
    let suffix = body.get("suffix").and_then(Value::as_str).map(str::to_owned);
    if let Some(s) = &suffix {
        let ok = match fake.flavor {
            FakeFlavor::OpenAi => s.chars().count() <= 64,
            FakeFlavor::Azure => {
                s.len() <= 40
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            }
        };
        if !ok {
            return bad("invalid suffix", "suffix");
        }
    }
    let hyperparameters = match fake.flavor {
        FakeFlavor::OpenAi => {
            let method = &body["method"];
            if !method.is_null() && method["type"] != "supervised" {
                return bad("only supervised is supported here", "method.type");
            }
            let h = method["supervised"]["hyperparameters"].clone();
            let setting = |v: &Value, lo: f64, hi: f64| {
                v.is_null() || v == "auto" || v.as_f64().is_some_and(|x| x >= lo && x <= hi)
            };
            if !setting(&h["n_epochs"], 1.0, 50.0)
                || !setting(&h["batch_size"], 1.0, 256.0)
                || !setting(&h["learning_rate_multiplier"], f64::MIN_POSITIVE, f64::MAX)
            {
                return bad("invalid hyperparameters", "method.supervised.hyperparameters");
            }
            if let Some(m) = body.get("metadata").and_then(Value::as_object)
                && (m.len() > 16 || m.values().any(|v| !v.is_string()))
            {
                return bad("metadata takes at most 16 string values", "metadata");
            }
            h
        }
        FakeFlavor::Azure => {
            let h = body.get("hyperparameters").cloned().unwrap_or(Value::Null);
            if let Some(map) = h.as_object()
                && map.values().any(|v| !v.is_number())
            {
                return bad("hyperparameters must be numbers", "hyperparameters");
            }
            h
        }
    };
    let mut inner = fake.lock();
    if !file_ok(&inner, training) {
        return bad(&format!("invalid training_file: {training}"), "training_file");
    }
    if let Some(v) = &validation
        && !file_ok(&inner, v)
    {
        return bad(&format!("invalid validation_file: {v}"), "validation_file");
    }
    let id = next_id(&mut inner, "ftjob");
    let created_at = tick(&mut inner);
    let metadata = body.get("metadata").and_then(Value::as_object).map(|m| {
        m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
    });
    let status = match fake.flavor {
        FakeFlavor::OpenAi => "validating_files",
        FakeFlavor::Azure => "pending",
    };
    let job = FakeJob {
        id,
        model: model.to_owned(),
        training_file: training.to_owned(),
        validation_file: validation,
        suffix,
        seed: body.get("seed").and_then(Value::as_i64),
        metadata,
        hyperparameters,
        status: status.into(),
        created_at,
        finished_at: None,
        step: 0,
        total_steps: fake.steps,
        events: vec![
            json!({"object": "fine_tuning.job.event", "id": format!("ftevent-{created_at}"), "created_at": created_at, "level": "info", "message": "Created fine-tuning job", "type": "message", "data": {}}),
        ],
        result_file: None,
        fine_tuned_model: None,
        error: None,
    };
    let body = job_json(fake.flavor, &job);
    inner.jobs.push(job);
    (created(fake.flavor), axum::Json(body)).into_response()
}

/// One step of a job's life, taken each time it is read.
fn advance(fake: &FakeOpenAi, inner: &mut Inner, i: usize) {
    let now = tick(inner);
    let event_id = next_id(inner, "ftevent");
    let job = &mut inner.jobs[i];
    let event = |id: &str, message: String, kind: &str, data: Value| json!({"object": "fine_tuning.job.event", "id": id, "created_at": now, "level": "info", "message": message, "type": kind, "data": data});
    match job.status.as_str() {
        "validating_files" | "pending" | "queued" => {
            if job.model.contains("will-fail") {
                job.status = "failed".into();
                job.finished_at = Some(now);
                job.error = Some(
                    json!({"code": "invalid_training_file", "message": "The training file has too few examples for this model.", "param": "training_file"}),
                );
                job.events.push(event(&event_id, "Job failed".into(), "message", json!({})));
            } else {
                job.status = "running".into();
                job.events.push(event(
                    &event_id,
                    "Fine-tuning job started".into(),
                    "message",
                    json!({}),
                ));
            }
        }
        "running" if job.step < job.total_steps => {
            job.step += 1;
            let step = job.step;
            let train = 2.0 / (step as f64 + 1.0);
            let mut data = json!({"step": step, "train_loss": train, "train_mean_token_accuracy": 0.5 + 0.1 * step as f64 / job.total_steps as f64, "total_steps": job.total_steps});
            if job.validation_file.is_some() && step.is_multiple_of(2) {
                data["valid_loss"] = (train + 0.1).into();
                data["valid_mean_token_accuracy"] = 0.5.into();
            }
            job.events.push(event(
                &event_id,
                format!("Step {step}/{}: training loss={train:.4}", job.total_steps),
                "metrics",
                data,
            ));
        }
        "running" => {
            job.status = "succeeded".into();
            job.finished_at = Some(now);
            let name = match fake.flavor {
                FakeFlavor::OpenAi => format!(
                    "ft:{}:fake-org:{}:{}",
                    job.model,
                    job.suffix.clone().unwrap_or_default(),
                    job.id
                ),
                FakeFlavor::Azure => format!(
                    "{}.ft-{}{}",
                    job.model,
                    job.id,
                    job.suffix.as_ref().map(|s| format!("-{s}")).unwrap_or_default()
                ),
            };
            job.fine_tuned_model = Some(name);
            let mut csv = String::from(
                "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n",
            );
            for step in 1..=job.total_steps {
                let train = 2.0 / (step as f64 + 1.0);
                if job.validation_file.is_some() && step.is_multiple_of(2) {
                    csv.push_str(&format!("{step},{train},0.6,{},0.5\n", train + 0.1));
                } else {
                    csv.push_str(&format!("{step},{train},0.6,,\n"));
                }
            }
            let content = match fake.flavor {
                FakeFlavor::OpenAi => {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.encode(csv).into_bytes()
                }
                FakeFlavor::Azure => csv.into_bytes(),
            };
            job.events.push(event(
                &event_id,
                "The job has successfully completed".into(),
                "message",
                json!({}),
            ));
            let file_id = format!("file-result-{}", job.id);
            job.result_file = Some(file_id.clone());
            inner.files.insert(
                file_id.clone(),
                FakeFile {
                    id: file_id,
                    filename: "step_metrics.csv".into(),
                    purpose: "fine-tune-results".into(),
                    content,
                    status: "processed".into(),
                    created_at: now,
                },
            );
        }
        _ => {}
    }
}

/// The hyperparameters a job reports: what was sent, with what was left
/// `auto` (or out) resolved, as the services report them once a job is
/// created (this fake picks 3 epochs, batch size 1, multiplier 1.8).
fn resolved(sent: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (key, default) in
        [("n_epochs", json!(3)), ("batch_size", json!(1)), ("learning_rate_multiplier", json!(1.8))]
    {
        let v = &sent[key];
        out.insert(key.to_owned(), if v.is_number() { v.clone() } else { default });
    }
    Value::Object(out)
}

fn job_json(flavor: FakeFlavor, job: &FakeJob) -> Value {
    let mut v = json!({
        "object": "fine_tuning.job", "id": job.id, "created_at": job.created_at, "model": job.model,
        "status": job.status, "training_file": job.training_file, "validation_file": job.validation_file,
        "fine_tuned_model": job.fine_tuned_model, "finished_at": job.finished_at,
        "result_files": job.result_file.iter().collect::<Vec<_>>(), "error": job.error,
        "trained_tokens": if job.status == "succeeded" { Some(1234) } else { None },
        "hyperparameters": resolved(&job.hyperparameters), "seed": job.seed.unwrap_or(42), "suffix": job.suffix,
    });
    match flavor {
        FakeFlavor::OpenAi => {
            v["organization_id"] = "org-fake".into();
            v["metadata"] = serde_json::to_value(&job.metadata).unwrap_or(Value::Null);
        }
        FakeFlavor::Azure => v["organisation_id"] = "org-fake".into(),
    }
    // OpenAI sends every field, null when unset (the spec requires them);
    // Azure leaves unset ones out.
    if flavor == FakeFlavor::Azure
        && let Value::Object(map) = &mut v
    {
        map.retain(|_, x| !x.is_null());
    }
    v
}

fn page<T: Clone>(
    items: &[T],
    id: impl Fn(&T) -> String,
    query: &BTreeMap<String, String>,
) -> (Vec<T>, bool) {
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(20).max(1);
    let start = match query.get("after") {
        Some(after) => {
            items.iter().position(|x| id(x) == *after).map(|p| p + 1).unwrap_or(items.len())
        }
        None => 0,
    };
    let end = (start + limit).min(items.len());
    (items[start..end].to_vec(), end < items.len())
}

fn list_jobs(fake: &FakeOpenAi, query: &BTreeMap<String, String>) -> Response {
    let inner = fake.lock();
    let filters: Vec<(&str, &String)> = query
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("metadata[")?.strip_suffix(']').map(|k| (k, v)))
        .collect();
    let newest_first: Vec<&FakeJob> = inner
        .jobs
        .iter()
        .rev()
        .filter(|j| {
            filters.iter().all(|(k, v)| j.metadata.as_ref().and_then(|m| m.get(*k)) == Some(*v))
        })
        .collect();
    let (items, has_more) = page(&newest_first, |j| j.id.clone(), query);
    let data: Vec<Value> = items.iter().map(|j| job_json(fake.flavor, j)).collect();
    axum::Json(json!({"object": "list", "data": data, "has_more": has_more})).into_response()
}

fn events(fake: &FakeOpenAi, id: &str, query: &BTreeMap<String, String>) -> Response {
    let inner = fake.lock();
    let Some(job) = inner.jobs.iter().find(|j| j.id == id) else { return not_found_job() };
    let mut newest_first: Vec<Value> = job.events.iter().rev().cloned().collect();
    if fake.flavor == FakeFlavor::Azure {
        for e in &mut newest_first {
            if e["level"] == "warn" {
                e["level"] = "warning".into();
            }
        }
    }
    let (items, has_more) =
        page(&newest_first, |e| e["id"].as_str().unwrap_or_default().to_owned(), query);
    axum::Json(json!({"object": "list", "data": items, "has_more": has_more})).into_response()
}

fn checkpoints(fake: &FakeOpenAi, id: &str) -> Response {
    let inner = fake.lock();
    let Some(job) = inner.jobs.iter().find(|j| j.id == id) else { return not_found_job() };
    let mut data = Vec::new();
    if let Some(model) = &job.fine_tuned_model {
        let steps: Vec<u64> = (2..=job.total_steps).step_by(2).collect();
        for &step in steps.iter().rev() {
            data.push(json!({
                "object": "fine_tuning.job.checkpoint", "id": format!("ftckpt-{}-{step}", job.id),
                "created_at": job.created_at + step as i64, "fine_tuning_job_id": job.id,
                "fine_tuned_model_checkpoint": format!("{model}:ckpt-step-{step}"), "step_number": step,
                "metrics": {"step": step, "train_loss": 2.0 / (step as f64 + 1.0)},
            }));
        }
    }
    axum::Json(json!({"object": "list", "data": data, "has_more": false, "first_id": null, "last_id": null})).into_response()
}

fn job_action(fake: &FakeOpenAi, id: &str, action: &str) -> Response {
    let mut inner = fake.lock();
    let now = tick(&mut inner);
    let Some(job) = inner.jobs.iter_mut().find(|j| j.id == id) else { return not_found_job() };
    let terminal = matches!(job.status.as_str(), "succeeded" | "failed" | "cancelled");
    let next = match (action, job.status.as_str()) {
        ("cancel", _) if !terminal => "cancelled",
        ("pause", "running") if fake.flavor == FakeFlavor::OpenAi => "paused",
        ("resume", "paused") if fake.flavor == FakeFlavor::OpenAi => "running",
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_state",
                &format!("cannot {action} a job that is {}", job.status),
                None,
            );
        }
    };
    job.status = next.into();
    if next == "cancelled" {
        job.finished_at = Some(now);
    }
    let body = job_json(fake.flavor, job);
    axum::Json(body).into_response()
}

async fn chat(fake: &FakeOpenAi, deployment: Option<&str>, request: Request) -> Response {
    let Ok(bytes) = axum::body::to_bytes(request.into_body(), 1 << 20).await else {
        return error(StatusCode::BAD_REQUEST, "invalid_body", "unreadable body", None);
    };
    let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
        return error(StatusCode::BAD_REQUEST, "invalid_json", "the body is not JSON", None);
    };
    let model = match deployment {
        Some(d) => d.to_owned(),
        None => match body["model"].as_str() {
            Some(m) => m.to_owned(),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "model is required",
                    Some("model"),
                );
            }
        },
    };
    if deployment.is_none() && model.starts_with("ft:") {
        let known =
            fake.lock().jobs.iter().any(|j| j.fine_tuned_model.as_deref() == Some(model.as_str()));
        if !known {
            return error(
                StatusCode::NOT_FOUND,
                "model_not_found",
                "The model does not exist",
                Some("model"),
            );
        }
    }
    let Some(last) = body["messages"].as_array().and_then(|m| m.last()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "messages are required",
            Some("messages"),
        );
    };
    fake.lock().last_chat = Some(body.clone());
    // Words stand for tokens: the answer is cut at the request's limit
    // (`max_completion_tokens` on OpenAI, `max_tokens` on Azure), as the
    // real service cuts it, and usage counts both sides.
    let limit = body["max_completion_tokens"].as_u64().or_else(|| body["max_tokens"].as_u64());
    let full = format!("{model} says: {}", last["content"].as_str().unwrap_or_default());
    let words: Vec<&str> = full.split_whitespace().collect();
    let kept = limit.map_or(words.len(), |n| words.len().min(n as usize));
    let finish_reason = if kept < words.len() { "length" } else { "stop" };
    let prompt_tokens: usize = body["messages"]
        .as_array()
        .map(|m| {
            m.iter().map(|m| m["content"].as_str().unwrap_or("").split_whitespace().count()).sum()
        })
        .unwrap_or(0);
    axum::Json(json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_750_000_000, "model": model,
        "choices": [{"index": 0, "logprobs": null, "finish_reason": finish_reason,
                     "message": {"role": "assistant", "content": words[..kept].join(" "), "refusal": null}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": kept, "total_tokens": prompt_tokens + kept},
    }))
    .into_response()
}
