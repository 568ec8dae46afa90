//! A stateful fake of Bedrock's control plane (model customization jobs,
//! custom models, custom model deployments, provisioned throughput, tags)
//! and of bedrock-runtime's Converse, speaking the REST/JSON protocol the
//! official SDK sends, with S3 left to a real peer (moto) through
//! `object_store`.
//!
//! It is faithful where it matters to a client: requests must be SigV4
//! signed for the `bedrock` service; a create with a known
//! `clientRequestToken` answers the same job instead of making another; the
//! training object must exist and be valid JSONL for the base model, or the
//! job fails in validation with a message naming the line; jobs move
//! `InProgress` (validation, then training) → `Completed` one step per
//! `GetModelCustomizationJob`, writing `step_wise_training_metrics.csv` and
//! `validation_metrics.csv` under the output prefix the way Bedrock lays
//! them out; `StopModelCustomizationJob` goes through `Stopping` to
//! `Stopped`; deployments provision slowly and may fail; Converse only
//! answers deployed custom models. Errors carry `x-amzn-ErrorType`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::{Value, json};

use super::fake_server::{FakeCore, Fault, loopback, serve};

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";

#[derive(Debug, Clone)]
struct FakeJob {
    arn: String,
    name: String,
    token: Option<String>,
    model_name: String,
    model_arn: String,
    base_model: String,
    role_arn: String,
    request: Value,
    status: &'static str,
    stage: &'static str,
    failure: Option<String>,
    ticks: u64,
    steps: u64,
    rows: u64,
    epochs: u64,
    created: String,
    modified: String,
    end: Option<String>,
}

#[derive(Debug, Clone)]
struct FakeDeployment {
    arn: String,
    name: String,
    model_arn: String,
    kind: DeploymentKind,
    status: &'static str,
    ticks: u64,
    units: i64,
    commitment: Option<String>,
    failure: Option<String>,
    created: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeploymentKind {
    OnDemand,
    Provisioned,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: Vec<FakeJob>,
    deployments: Vec<FakeDeployment>,
    tokens: BTreeMap<String, String>,
    tags: BTreeMap<String, Vec<(String, String)>>,
    creates: u64,
    serial: u64,
    fail_deployments: u64,
    deleted_deployments: u64,
}

/// A fake Bedrock control plane and runtime on a loopback port.
#[derive(Clone)]
pub struct FakeBedrock {
    inner: Arc<Mutex<Inner>>,
    core: Arc<FakeCore>,
    store: Arc<dyn ObjectStore>,
    bucket: String,
    provision_ticks: u64,
    addr: SocketAddr,
}

impl std::fmt::Debug for FakeBedrock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBedrock")
            .field("addr", &self.addr)
            .field("bucket", &self.bucket)
            .finish()
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn error(status: u16, code: &str, message: &str) -> Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(json!({ "message": message })),
    )
        .into_response();
    if let Ok(v) = code.parse() {
        response.headers_mut().insert("x-amzn-errortype", v);
    }
    response
}

fn ok(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), axum::Json(body)).into_response()
}

fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&segment[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FakeBedrock {
    /// Starts the fake. `store` is the S3 bucket `bucket` (a moto bucket in
    /// the workspace's tests) that jobs read their data from and write
    /// their metrics to.
    pub async fn start(store: Arc<dyn ObjectStore>, bucket: &str) -> Self {
        let (listener, addr) = loopback().await;
        let fake = Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            core: Arc::default(),
            store,
            bucket: bucket.to_owned(),
            provision_ticks: 2,
            addr,
        };
        serve(listener, axum::Router::new().fallback(handle).with_state(fake.clone()));
        fake
    }

    /// The endpoint URL to configure.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails the next matching request.
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

    /// `CreateModelCustomizationJob` requests received (retries included).
    pub fn create_requests(&self) -> u64 {
        self.lock().creates
    }

    /// Every request as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.core.requests()
    }

    /// The create request a job was made from, as received.
    pub fn job_request(&self, name_or_arn: &str) -> Option<Value> {
        self.lock()
            .jobs
            .iter()
            .find(|j| j.arn == name_or_arn || j.name == name_or_arn)
            .map(|j| j.request.clone())
    }

    /// Makes the next `n` deployments (either kind) fail while provisioning.
    pub fn fail_next_deployments(&self, n: u64) {
        self.lock().fail_deployments = n;
    }

    /// Deployments (on-demand and provisioned) that exist, as
    /// `(arn, status)`.
    pub fn deployments(&self) -> Vec<(String, String)> {
        self.lock().deployments.iter().map(|d| (d.arn.clone(), d.status.to_owned())).collect()
    }

    /// Deployments deleted so far.
    pub fn deleted_deployments(&self) -> u64 {
        self.lock().deleted_deployments
    }

    /// Creates a deployment outside the library (a user's own), Active at
    /// once; returns its ARN.
    pub fn preexisting_deployment(&self, name: &str, model_arn: &str) -> String {
        let mut inner = self.lock();
        inner.serial += 1;
        let arn = format!(
            "arn:aws:bedrock:{REGION}:{ACCOUNT}:custom-model-deployment/pre{:08}",
            inner.serial
        );
        inner.deployments.push(FakeDeployment {
            arn: arn.clone(),
            name: name.to_owned(),
            model_arn: model_arn.to_owned(),
            kind: DeploymentKind::OnDemand,
            status: "Active",
            ticks: 0,
            units: 0,
            commitment: None,
            failure: None,
            created: now(),
        });
        arn
    }
}

/// The key of an `s3://` URI in the fake's bucket; otherwise the message
/// of the `ValidationException` Bedrock answers.
fn s3_key<'a>(fake: &FakeBedrock, uri: &'a str) -> Result<&'a str, String> {
    let rest = uri.strip_prefix("s3://").ok_or_else(|| "expected an s3:// URI".to_owned())?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket != fake.bucket {
        return Err(format!("the role cannot access the bucket {bucket}"));
    }
    Ok(key.trim_end_matches('/'))
}

async fn handle(State(fake): State<FakeBedrock>, request: Request) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let headers = request.headers().clone();
    let path = uri.path().to_owned();
    let query: BTreeMap<String, String> = uri
        .query()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    fake.core.record(&method, &path);
    if !signed(&headers) {
        return error(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }
    let body = match axum::body::to_bytes(request.into_body(), 16 << 20).await {
        Ok(b) => b,
        Err(_) => return error(400, "ValidationException", "unreadable body"),
    };
    let json: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(400, "SerializationException", &e.to_string()),
        }
    };
    if method == Method::POST && path == "/model-customization-jobs" {
        fake.lock().creates += 1;
    }
    let route = route(&fake, &method, &path, &query, &json);
    let fault_error = |f: &Fault| {
        let code = f.code.as_deref().unwrap_or("InternalServerException");
        let message = if f.commit {
            "injected fault (the request was carried out)"
        } else {
            "injected fault"
        };
        let mut response = error(f.status, code, message);
        f.add_retry_after(&mut response);
        response
    };
    fake.core.answer(&method, &path, route, fault_error).await
}

/// A SigV4 `Authorization` header for Bedrock (either plane).
fn signed(headers: &HeaderMap) -> bool {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    auth.starts_with("AWS4-HMAC-SHA256 Credential=")
        && auth.contains("/bedrock/aws4_request")
        && auth.contains("SignedHeaders=")
        && auth.contains("Signature=")
}

async fn route(
    fake: &FakeBedrock,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    body: &Value,
) -> Response {
    let segments: Vec<String> = path.trim_start_matches('/').split('/').map(decode).collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["model-customization-jobs"]) => create_job(fake, body).await,
        ("GET", ["model-customization-jobs"]) => list_jobs(fake, query),
        ("GET", ["model-customization-jobs", id]) => get_job(fake, id).await,
        ("POST", ["model-customization-jobs", id, "stop"]) => stop_job(fake, id),
        ("GET", ["custom-models", id]) => get_custom_model(fake, id),
        ("POST", ["model-customization", "custom-model-deployments"]) => {
            create_deployment(fake, body, DeploymentKind::OnDemand)
        }
        ("GET", ["model-customization", "custom-model-deployments"]) => {
            list_deployments(fake, query, DeploymentKind::OnDemand)
        }
        ("GET", ["model-customization", "custom-model-deployments", id]) => {
            get_deployment(fake, id, DeploymentKind::OnDemand)
        }
        ("DELETE", ["model-customization", "custom-model-deployments", id]) => {
            delete_deployment(fake, id, DeploymentKind::OnDemand)
        }
        ("POST", ["provisioned-model-throughput"]) => {
            create_deployment(fake, body, DeploymentKind::Provisioned)
        }
        ("GET", ["provisioned-model-throughputs"]) => {
            list_deployments(fake, query, DeploymentKind::Provisioned)
        }
        ("GET", ["provisioned-model-throughput", id]) => {
            get_deployment(fake, id, DeploymentKind::Provisioned)
        }
        ("DELETE", ["provisioned-model-throughput", id]) => {
            delete_deployment(fake, id, DeploymentKind::Provisioned)
        }
        ("POST", ["listTagsForResource"]) => list_tags(fake, body),
        ("POST", ["model", id, "converse"]) => converse(fake, id, body),
        _ => error(404, "UnknownOperationException", &format!("no operation at {method} {path}")),
    }
}

fn str_field<'a>(body: &'a Value, pointer: &str) -> Option<&'a str> {
    body.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.' | '_'))
}

/// Checks a training file the way Bedrock's validation stage does: every
/// line a JSON object in the layout the base model takes.
fn check_training(base_model: &str, content: &[u8]) -> Result<u64, String> {
    let conversation = base_model.starts_with("amazon.nova");
    let mut rows = 0;
    for (i, line) in content.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value: Value = serde_json::from_slice(line)
            .map_err(|e| format!("line {}: not a JSON object ({e})", i + 1))?;
        let fine = if conversation {
            value["schemaVersion"] == "bedrock-conversation-2024"
                && value["messages"].as_array().is_some_and(|m| {
                    m.len() >= 2
                        && m[0]["role"] == "user"
                        && m.last().is_some_and(|l| l["role"] == "assistant")
                })
        } else {
            value["prompt"].is_string() && value["completion"].is_string()
        };
        if !fine {
            let layout =
                if conversation { "bedrock-conversation-2024" } else { "{prompt, completion}" };
            return Err(format!("line {}: not in the {layout} layout this model takes", i + 1));
        }
        rows += 1;
    }
    if rows == 0 {
        return Err("the training file has no records".into());
    }
    Ok(rows)
}

async fn create_job(fake: &FakeBedrock, body: &Value) -> Response {
    for field in [
        "/jobName",
        "/customModelName",
        "/roleArn",
        "/baseModelIdentifier",
        "/trainingDataConfig/s3Uri",
        "/outputDataConfig/s3Uri",
    ] {
        if str_field(body, field).is_none() {
            return error(400, "ValidationException", &format!("{} is required", &field[1..]));
        }
    }
    let name = str_field(body, "/jobName").unwrap_or_default().to_owned();
    let token = str_field(body, "/clientRequestToken").map(str::to_owned);
    {
        let inner = fake.lock();
        if let Some(arn) = token.as_ref().and_then(|t| inner.tokens.get(t)) {
            // Idempotent: the same token answers the same job.
            return ok(201, json!({ "jobArn": arn }));
        }
        if inner.jobs.iter().any(|j| j.name == name) {
            return error(400, "ResourceInUseException", &format!("a job named {name} exists"));
        }
    }
    if !valid_name(&name) || !valid_name(str_field(body, "/customModelName").unwrap_or_default()) {
        return error(
            400,
            "ValidationException",
            "jobName and customModelName must match [a-zA-Z0-9](-*[a-zA-Z0-9+.])* within 63 characters",
        );
    }
    if !str_field(body, "/roleArn").unwrap_or_default().contains(":role/") {
        return error(400, "ValidationException", "roleArn must be an IAM role ARN");
    }
    if body
        .get("customizationType")
        .is_some_and(|t| t != "FINE_TUNING" && t != "CONTINUED_PRE_TRAINING")
    {
        return error(400, "ValidationException", "unsupported customizationType");
    }
    let base_model = str_field(body, "/baseModelIdentifier").unwrap_or_default().to_owned();
    if let Some(hp) = body.get("hyperParameters").and_then(Value::as_object)
        && let Some((k, _)) = hp.iter().find(|(_, v)| !v.is_string())
    {
        return error(400, "ValidationException", &format!("hyperParameters.{k} must be a string"));
    }
    let mut inputs =
        vec![str_field(body, "/trainingDataConfig/s3Uri").unwrap_or_default().to_owned()];
    if let Some(validators) =
        body.pointer("/validationDataConfig/validators").and_then(Value::as_array)
    {
        inputs.extend(validators.iter().filter_map(|v| v["s3Uri"].as_str().map(str::to_owned)));
    }
    for input in &inputs {
        let key = match s3_key(fake, input) {
            Ok(k) => k.to_owned(),
            Err(m) => return error(400, "ValidationException", &m),
        };
        if fake.store.head(&StorePath::from(key.as_str())).await.is_err() {
            return error(
                400,
                "ValidationException",
                &format!("cannot read {input}: no such object"),
            );
        }
    }
    if let Err(m) = s3_key(fake, str_field(body, "/outputDataConfig/s3Uri").unwrap_or_default()) {
        return error(400, "ValidationException", &m);
    }
    let epochs = body
        .pointer("/hyperParameters/epochCount")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2u64);
    let created = now();
    let mut inner = fake.lock();
    inner.serial += 1;
    let short = format!("{:012x}", 0xb3d0_0000_0000u64 + inner.serial);
    let arn =
        format!("arn:aws:bedrock:{REGION}:{ACCOUNT}:model-customization-job/{base_model}/{short}");
    let model_name = str_field(body, "/customModelName").unwrap_or_default().to_owned();
    let job = FakeJob {
        arn: arn.clone(),
        name,
        token: token.clone(),
        model_arn: format!("arn:aws:bedrock:{REGION}:{ACCOUNT}:custom-model/{base_model}/{short}"),
        model_name,
        base_model,
        role_arn: str_field(body, "/roleArn").unwrap_or_default().to_owned(),
        request: body.clone(),
        status: "InProgress",
        stage: "validation",
        failure: None,
        ticks: 0,
        steps: 0,
        rows: 0,
        epochs,
        created: created.clone(),
        modified: created,
        end: None,
    };
    remember(&mut inner, &arn, token, body.get("jobTags"));
    inner.jobs.push(job);
    ok(201, json!({ "jobArn": arn }))
}

fn find_job<'a>(inner: &'a mut Inner, id: &str) -> Option<&'a mut FakeJob> {
    inner.jobs.iter_mut().find(|j| j.arn == id || j.name == id)
}

/// One step of a job's life per poll; the metrics files are written the
/// moment it completes.
async fn get_job(fake: &FakeBedrock, id: &str) -> Response {
    let (job, read_training) = {
        let mut inner = fake.lock();
        let Some(job) = find_job(&mut inner, id) else {
            return error(404, "ResourceNotFoundException", &format!("no customization job {id}"));
        };
        job.ticks += 1;
        (job.clone(), job.stage == "validation" && job.status == "InProgress" && job.ticks >= 2)
    };
    let mut job = job;
    if job.status == "Stopping" {
        job.status = "Stopped";
        job.end = Some(now());
    } else if read_training {
        // Validation: read the training file from S3.
        let uri = job
            .request
            .pointer("/trainingDataConfig/s3Uri")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let key = s3_key(fake, uri).map(str::to_owned).unwrap_or_default();
        let content = match fake.store.get(&StorePath::from(key.as_str())).await {
            Ok(got) => got.bytes().await.map(|b| b.to_vec()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match content.and_then(|c| check_training(&job.base_model, &c)) {
            Ok(rows) => {
                job.rows = rows;
                let batch = job
                    .request
                    .pointer("/hyperParameters/batchSize")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1u64)
                    .max(1);
                job.steps = (rows * job.epochs).div_ceil(batch).clamp(2, 40);
                job.stage = "training";
            }
            Err(message) => {
                job.status = "Failed";
                job.failure = Some(format!("Training data validation failed: {message}"));
                job.end = Some(now());
            }
        }
    } else if job.status == "InProgress" && job.stage == "training" && job.ticks >= job.steps + 2 {
        if let Err(e) = write_metrics(fake, &job).await {
            return error(500, "InternalServerException", &e);
        }
        job.status = "Completed";
        job.stage = "done";
        job.end = Some(now());
    }
    job.modified = now();
    {
        let mut inner = fake.lock();
        if let Some(stored) = find_job(&mut inner, id) {
            // A stop that arrived meanwhile wins over progress.
            if stored.status == "Stopping" && job.status == "InProgress" {
                job.status = "Stopping";
            }
            *stored = job.clone();
        }
    }
    ok(200, job_body(&job))
}

fn stage_status(job: &FakeJob, stage: &str) -> &'static str {
    let order = ["validation", "dataProcessing", "training"];
    let at = |s: &str| order.iter().position(|o| *o == s).unwrap_or(order.len());
    let current = match job.stage {
        "validation" => 0,
        "training" => 2,
        _ => 3,
    };
    match job.status {
        "Completed" => "Completed",
        "Failed" if at(stage) == current => "Failed",
        "Stopped" | "Stopping" if at(stage) >= current => "Stopped",
        _ if at(stage) < current => "Completed",
        _ if at(stage) == current => "InProgress",
        _ => "NotStarted",
    }
}

fn job_body(job: &FakeJob) -> Value {
    let mut body = json!({
        "jobArn": job.arn,
        "jobName": job.name,
        "outputModelName": job.model_name,
        "roleArn": job.role_arn,
        "status": job.status,
        "statusDetails": {
            "validationDetails": { "status": stage_status(job, "validation"), "creationTime": job.created, "lastModifiedTime": job.modified },
            "dataProcessingDetails": { "status": stage_status(job, "dataProcessing"), "creationTime": job.created, "lastModifiedTime": job.modified },
            "trainingDetails": { "status": stage_status(job, "training"), "creationTime": job.created, "lastModifiedTime": job.modified },
        },
        "creationTime": job.created,
        "lastModifiedTime": job.modified,
        "baseModelArn": format!("arn:aws:bedrock:{REGION}::foundation-model/{}", job.base_model),
        "hyperParameters": job.request.get("hyperParameters").cloned().unwrap_or(json!({})),
        "trainingDataConfig": job.request["trainingDataConfig"],
        "outputDataConfig": job.request["outputDataConfig"],
        "customizationType": job.request.get("customizationType").cloned().unwrap_or(json!("FINE_TUNING")),
    });
    if let Some(v) = job.request.get("validationDataConfig") {
        body["validationDataConfig"] = v.clone();
    }
    if let Some(t) = &job.token {
        body["clientRequestToken"] = json!(t);
    }
    if let Some(f) = &job.failure {
        body["failureMessage"] = json!(f);
    }
    if let Some(e) = &job.end {
        body["endTime"] = json!(e);
    }
    if job.status == "Completed" {
        body["outputModelArn"] = json!(job.model_arn);
        body["trainingMetrics"] = json!({ "trainingLoss": train_loss(job.steps - 1) });
        if job.request.get("validationDataConfig").is_some() {
            body["validationMetrics"] = json!([{ "validationLoss": validation_loss(job.epochs) }]);
        }
    }
    body
}

fn train_loss(step: u64) -> f64 {
    0.4 + 2.0 * (-0.15 * step as f64).exp()
}

fn validation_loss(epoch: u64) -> f64 {
    0.55 + 1.8 * (-0.6 * epoch as f64).exp()
}

async fn write_metrics(fake: &FakeBedrock, job: &FakeJob) -> Result<(), String> {
    let output =
        job.request.pointer("/outputDataConfig/s3Uri").and_then(Value::as_str).unwrap_or_default();
    let prefix = s3_key(fake, output)?;
    let short = job.arn.rsplit('/').next().unwrap_or_default();
    let folder = if prefix.is_empty() {
        format!("model-customization-job-{short}")
    } else {
        format!("{prefix}/model-customization-job-{short}")
    };
    let per_epoch = job.steps.div_ceil(job.epochs.max(1)).max(1);
    let mut training = String::from("step_number,epoch_number,training_loss,perplexity\n");
    for step in 0..job.steps {
        let loss = train_loss(step);
        training.push_str(&format!("{step},{},{loss:.6},{:.6}\n", step / per_epoch, loss.exp()));
    }
    let put = |key: String, text: String| async move {
        fake.store
            .put(&StorePath::from(key.as_str()), PutPayload::from(text.into_bytes()))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    put(format!("{folder}/training_artifacts/step_wise_training_metrics.csv"), training).await?;
    if job.request.get("validationDataConfig").is_some() {
        let mut validation = String::from("step_number,epoch_number,validation_loss,perplexity\n");
        for epoch in 1..=job.epochs {
            let loss = validation_loss(epoch);
            let step = (epoch * per_epoch).min(job.steps) - 1;
            validation.push_str(&format!("{step},{epoch},{loss:.6},{:.6}\n", loss.exp()));
        }
        put(
            format!("{folder}/validation_artifacts/post_fine_tuning_validation/validation/validation_metrics.csv"),
            validation,
        )
        .await?;
    }
    Ok(())
}

/// The first item and the size of the page a listing asks for.
fn page_window(query: &BTreeMap<String, String>) -> (usize, usize) {
    let max = query.get("maxResults").and_then(|m| m.parse().ok()).unwrap_or(100).clamp(1, 1000);
    let start = query
        .get("nextToken")
        .and_then(|t| t.strip_prefix("page-"))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    (start, max)
}

/// Adds `nextToken` when items remain after this page.
fn set_next_token(body: &mut Value, start: usize, max: usize, total: usize) {
    if start + max < total {
        body["nextToken"] = json!(format!("page-{}", start + max));
    }
}

/// Keeps a create's idempotency token and tags for `arn`.
fn remember(inner: &mut Inner, arn: &str, token: Option<String>, tags: Option<&Value>) {
    if let Some(t) = token {
        inner.tokens.insert(t, arn.to_owned());
    }
    if let Some(tags) = tags.and_then(Value::as_array) {
        let tags = tags
            .iter()
            .filter_map(|t| Some((t["key"].as_str()?.to_owned(), t["value"].as_str()?.to_owned())))
            .collect();
        inner.tags.insert(arn.to_owned(), tags);
    }
}

fn list_jobs(fake: &FakeBedrock, query: &BTreeMap<String, String>) -> Response {
    let inner = fake.lock();
    let (start, max) = page_window(query);
    let mut jobs: Vec<&FakeJob> = inner.jobs.iter().collect();
    if query.get("sortOrder").map(String::as_str) != Some("Ascending") {
        jobs.reverse();
    }
    if let Some(status) = query.get("statusEquals") {
        jobs.retain(|j| j.status == status);
    }
    let page: Vec<Value> = jobs
        .iter()
        .skip(start)
        .take(max)
        .map(|j| {
            let mut s = json!({
                "jobArn": j.arn, "jobName": j.name, "status": j.status,
                "baseModelArn": format!("arn:aws:bedrock:{REGION}::foundation-model/{}", j.base_model),
                "creationTime": j.created, "lastModifiedTime": j.modified,
                "customModelName": j.model_name, "customizationType": "FINE_TUNING",
            });
            if j.status == "Completed" {
                s["customModelArn"] = json!(j.model_arn);
            }
            if let Some(e) = &j.end {
                s["endTime"] = json!(e);
            }
            s
        })
        .collect();
    let mut body = json!({ "modelCustomizationJobSummaries": page });
    set_next_token(&mut body, start, max, jobs.len());
    ok(200, body)
}

fn stop_job(fake: &FakeBedrock, id: &str) -> Response {
    let mut inner = fake.lock();
    let Some(job) = find_job(&mut inner, id) else {
        return error(404, "ResourceNotFoundException", &format!("no customization job {id}"));
    };
    if job.status != "InProgress" {
        return error(
            400,
            "ValidationException",
            &format!("the job is {}, it cannot be stopped", job.status),
        );
    }
    job.status = "Stopping";
    ok(200, json!({}))
}

fn get_custom_model(fake: &FakeBedrock, id: &str) -> Response {
    let inner = fake.lock();
    let Some(job) = inner
        .jobs
        .iter()
        .find(|j| j.status == "Completed" && (j.model_arn == id || j.model_name == id))
    else {
        return error(404, "ResourceNotFoundException", &format!("no custom model {id}"));
    };
    ok(
        200,
        json!({
            "modelArn": job.model_arn, "modelName": job.model_name, "jobName": job.name, "jobArn": job.arn,
            "baseModelArn": format!("arn:aws:bedrock:{REGION}::foundation-model/{}", job.base_model),
            "customizationType": "FINE_TUNING", "modelStatus": "Active",
            "hyperParameters": job.request.get("hyperParameters").cloned().unwrap_or(json!({})),
            "trainingDataConfig": job.request["trainingDataConfig"], "outputDataConfig": job.request["outputDataConfig"],
            "creationTime": job.end.clone().unwrap_or_else(|| job.created.clone()),
        }),
    )
}

fn create_deployment(fake: &FakeBedrock, body: &Value, kind: DeploymentKind) -> Response {
    let (name_field, model_field) = match kind {
        DeploymentKind::OnDemand => ("/modelDeploymentName", "/modelArn"),
        DeploymentKind::Provisioned => ("/provisionedModelName", "/modelId"),
    };
    let (Some(name), Some(model)) = (str_field(body, name_field), str_field(body, model_field))
    else {
        return error(
            400,
            "ValidationException",
            &format!("{} and {} are required", &name_field[1..], &model_field[1..]),
        );
    };
    let mut inner = fake.lock();
    let token = str_field(body, "/clientRequestToken").map(str::to_owned);
    if let Some(arn) = token.as_ref().and_then(|t| inner.tokens.get(t)) {
        let field = if kind == DeploymentKind::OnDemand {
            "customModelDeploymentArn"
        } else {
            "provisionedModelArn"
        };
        return ok(if kind == DeploymentKind::OnDemand { 202 } else { 201 }, json!({ field: arn }));
    }
    if inner.deployments.iter().any(|d| d.name == name && d.kind == kind) {
        return error(409, "ConflictException", &format!("a deployment named {name} exists"));
    }
    if !inner.jobs.iter().any(|j| j.status == "Completed" && j.model_arn == model) {
        return error(404, "ResourceNotFoundException", &format!("no custom model {model}"));
    }
    let units = body.get("modelUnits").and_then(Value::as_i64).unwrap_or(0);
    if kind == DeploymentKind::Provisioned && units < 1 {
        return error(400, "ValidationException", "modelUnits must be at least 1");
    }
    inner.serial += 1;
    let arn = match kind {
        DeploymentKind::OnDemand => format!(
            "arn:aws:bedrock:{REGION}:{ACCOUNT}:custom-model-deployment/d{:011}",
            inner.serial
        ),
        DeploymentKind::Provisioned => {
            format!("arn:aws:bedrock:{REGION}:{ACCOUNT}:provisioned-model/p{:011}", inner.serial)
        }
    };
    let failure = if inner.fail_deployments > 0 {
        inner.fail_deployments -= 1;
        Some("Insufficient capacity for the deployment".to_owned())
    } else {
        None
    };
    inner.deployments.push(FakeDeployment {
        arn: arn.clone(),
        name: name.to_owned(),
        model_arn: model.to_owned(),
        kind,
        status: "Creating",
        ticks: 0,
        units,
        commitment: str_field(body, "/commitmentDuration").map(str::to_owned),
        failure,
        created: now(),
    });
    remember(&mut inner, &arn, token, body.get("tags"));
    match kind {
        DeploymentKind::OnDemand => ok(202, json!({ "customModelDeploymentArn": arn })),
        DeploymentKind::Provisioned => ok(201, json!({ "provisionedModelArn": arn })),
    }
}

fn ready_status(kind: DeploymentKind) -> &'static str {
    match kind {
        DeploymentKind::OnDemand => "Active",
        DeploymentKind::Provisioned => "InService",
    }
}

fn deployment_body(d: &FakeDeployment) -> Value {
    let mut body = match d.kind {
        DeploymentKind::OnDemand => json!({
            "customModelDeploymentArn": d.arn, "modelDeploymentName": d.name, "modelArn": d.model_arn,
            "createdAt": d.created, "lastUpdatedAt": d.created, "status": d.status,
        }),
        DeploymentKind::Provisioned => json!({
            "provisionedModelArn": d.arn, "provisionedModelName": d.name, "modelArn": d.model_arn,
            "desiredModelArn": d.model_arn, "foundationModelArn": format!("arn:aws:bedrock:{REGION}::foundation-model/base"),
            "modelUnits": d.units, "desiredModelUnits": d.units, "creationTime": d.created,
            "lastModifiedTime": d.created, "status": d.status,
        }),
    };
    if let Some(c) = &d.commitment {
        body["commitmentDuration"] = json!(c);
    }
    if d.status == "Failed"
        && let Some(f) = &d.failure
    {
        body["failureMessage"] = json!(f);
    }
    body
}

fn get_deployment(fake: &FakeBedrock, id: &str, kind: DeploymentKind) -> Response {
    let provision_ticks = fake.provision_ticks;
    let mut inner = fake.lock();
    let Some(d) =
        inner.deployments.iter_mut().find(|d| d.kind == kind && (d.arn == id || d.name == id))
    else {
        return error(404, "ResourceNotFoundException", &format!("no deployment {id}"));
    };
    if d.status == "Creating" {
        d.ticks += 1;
        if d.ticks >= provision_ticks {
            d.status = if d.failure.is_some() { "Failed" } else { ready_status(kind) };
        }
    }
    ok(200, deployment_body(d))
}

fn delete_deployment(fake: &FakeBedrock, id: &str, kind: DeploymentKind) -> Response {
    let mut inner = fake.lock();
    let Some(at) =
        inner.deployments.iter().position(|d| d.kind == kind && (d.arn == id || d.name == id))
    else {
        return error(404, "ResourceNotFoundException", &format!("no deployment {id}"));
    };
    let gone = inner.deployments.remove(at);
    inner.tags.remove(&gone.arn);
    inner.deleted_deployments += 1;
    ok(200, json!({}))
}

fn list_deployments(
    fake: &FakeBedrock,
    query: &BTreeMap<String, String>,
    kind: DeploymentKind,
) -> Response {
    let inner = fake.lock();
    let (start, max) = page_window(query);
    let all: Vec<&FakeDeployment> = inner.deployments.iter().filter(|d| d.kind == kind).collect();
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(max)
        .map(|d| match kind {
            DeploymentKind::OnDemand => json!({
                "customModelDeploymentArn": d.arn, "customModelDeploymentName": d.name,
                "modelArn": d.model_arn, "createdAt": d.created, "status": d.status,
            }),
            DeploymentKind::Provisioned => deployment_body(d),
        })
        .collect();
    let field = match kind {
        DeploymentKind::OnDemand => "modelDeploymentSummaries",
        DeploymentKind::Provisioned => "provisionedModelSummaries",
    };
    let mut body = json!({ field: page });
    set_next_token(&mut body, start, max, all.len());
    ok(200, body)
}

fn list_tags(fake: &FakeBedrock, body: &Value) -> Response {
    let Some(arn) = str_field(body, "/resourceARN") else {
        return error(400, "ValidationException", "resourceARN is required");
    };
    let inner = fake.lock();
    let known =
        inner.jobs.iter().any(|j| j.arn == arn) || inner.deployments.iter().any(|d| d.arn == arn);
    if !known {
        return error(404, "ResourceNotFoundException", &format!("no resource {arn}"));
    }
    let tags: Vec<Value> = inner
        .tags
        .get(arn)
        .map(|t| t.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect())
        .unwrap_or_default();
    ok(200, json!({ "tags": tags }))
}

fn converse(fake: &FakeBedrock, model: &str, body: &Value) -> Response {
    let inner = fake.lock();
    let deployment = inner.deployments.iter().find(|d| d.arn == model);
    let Some(d) = deployment else {
        if inner.jobs.iter().any(|j| j.model_arn == model) {
            return error(
                400,
                "ValidationException",
                "custom models must be deployed before they can be invoked",
            );
        }
        return error(404, "ResourceNotFoundException", &format!("no model {model}"));
    };
    if d.status != ready_status(d.kind) {
        return error(400, "ValidationException", &format!("the deployment is {}", d.status));
    }
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"][0]["text"].as_str())
        .unwrap_or("");
    let text = format!("[{}] {}", d.name, last_user.chars().rev().collect::<String>());
    let tokens = last_user.split_whitespace().count() as i64;
    ok(
        200,
        json!({
            "output": { "message": { "role": "assistant", "content": [{ "text": text }] } },
            "stopReason": "end_turn",
            "usage": { "inputTokens": tokens, "outputTokens": tokens + 1, "totalTokens": 2 * tokens + 1 },
            "metrics": { "latencyMs": 3 },
        }),
    )
}
