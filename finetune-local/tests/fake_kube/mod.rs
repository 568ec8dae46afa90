//! A stateful fake of the part of the Kubernetes API the cluster provider
//! uses, faithful where a client can tell: Jobs (create, with 409 on a
//! replayed name; get; list by label; delete with foreground propagation),
//! Pods (list by label, logs with `tailLines`), lists in pages (`limit`,
//! `continue`; a token whose revision was compacted away is 410 `Expired`,
//! and compaction can be made to happen while a client pages), `Status`
//! bodies for errors, and throttling (429 with `Retry-After`) on demand.
//!
//! Its Job controller is real enough to test against: each pod is the real
//! trainer binary run as a child process, its `hostPath` volumes mapped to
//! the host folders; a pod whose GPUs no node has stays Pending
//! (`Unschedulable`); a pod over its memory limit is killed as `OOMKilled`
//! (exit 137); a failed pod is replaced until `backoffLimit`, unless the
//! pod failure policy's `FailJob` rule matches its exit code. An Indexed
//! Job runs its completions at once, each pod with `JOB_COMPLETION_INDEX`;
//! headless Services (garbage-collected with the Job that owns them) give
//! pods the names `<job>-<index>.<service>`, which the fake's "DNS"
//! resolves to loopback, and each Job gets its own port for `MASTER_PORT`
//! (pods share the host's network here, as they do not on a cluster).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<String, Value>,
    pods: BTreeMap<String, Pod>,
    services: BTreeMap<String, Value>,
    /// Jobs that ended (their remaining pods are stopped).
    stopped: Vec<String>,
    /// The port each Job's pods get for `MASTER_PORT`.
    ports: BTreeMap<String, u16>,
    /// Jobs deleted (their controllers stop).
    deleted: Vec<String>,
    resource_version: u64,
    requests: Vec<String>,
    throttle: u32,
    throttled: u32,
    gpus: u32,
    /// Revisions at or below this one are compacted away.
    compacted: u64,
    /// Compact right after the next page that hands out a continue token.
    compact_while_listing: bool,
    /// Continue tokens answered 410 so far.
    expired: u32,
}

struct Pod {
    object: Value,
    job: String,
    pid: Option<u32>,
    log: PathBuf,
}

/// The fake API server.
#[derive(Clone)]
pub(crate) struct FakeKube {
    inner: Arc<Mutex<Inner>>,
    url: String,
    /// The program a container without a command runs (the image's entry
    /// point).
    entry_point: PathBuf,
    logs: Arc<tempfile::TempDir>,
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    (StatusCode::from_u16(code).unwrap(), Json(body)).into_response()
}

fn matches(labels: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector else { return true };
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        labels.get(k).and_then(Value::as_str) == Some(v)
    })
}

impl FakeKube {
    /// Starts the server on loopback; pods run `entry_point`. The one node
    /// has `gpus` GPUs.
    pub(crate) async fn start(entry_point: PathBuf, gpus: u32) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = Self {
            inner: Arc::new(Mutex::new(Inner { gpus, ..Inner::default() })),
            url,
            entry_point,
            logs: Arc::new(tempfile::tempdir().unwrap()),
        };
        let app = Router::new()
            .route("/apis/batch/v1/namespaces/{ns}/jobs", get(list_jobs).post(create_job))
            .route("/apis/batch/v1/namespaces/{ns}/jobs/{name}", get(get_job).delete(delete_job))
            .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
            .route("/api/v1/namespaces/{ns}/services", get(list_services).post(create_service))
            .route(
                "/api/v1/namespaces/{ns}/services/{name}",
                get(get_service).delete(delete_service),
            )
            .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
            .layer(axum::middleware::from_fn_with_state(fake.clone(), gate))
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    /// The API's address.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// A client for it, in namespace `default`.
    pub(crate) fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Requests seen, as `METHOD path`.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// The next `n` requests are answered 429.
    pub(crate) fn throttle(&self, n: u32) {
        self.lock().throttle = n;
    }

    /// Requests answered 429 so far.
    pub(crate) fn throttled(&self) -> u32 {
        self.lock().throttled
    }

    /// The next list that hands out a continue token sees the store
    /// compacted right after: the token expires before the client uses it.
    pub(crate) fn compact_while_listing(&self) {
        self.lock().compact_while_listing = true;
    }

    /// Continue tokens answered 410 `Expired` so far.
    pub(crate) fn expired(&self) -> u32 {
        self.lock().expired
    }

    /// Jobs and pods of ours that exist.
    pub(crate) fn objects(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.jobs.len(), inner.pods.len())
    }

    /// Pods made for `job` so far.
    pub(crate) fn pods_of(&self, job: &str) -> usize {
        self.lock().pods.values().filter(|p| p.job == job).count()
    }

    /// The process id of `job`'s running pod, if one runs.
    pub(crate) fn running_pid(&self, job: &str) -> Option<u32> {
        self.running_pids(job).into_values().next()
    }

    fn next_version(inner: &mut Inner) -> String {
        inner.resource_version += 1;
        inner.resource_version.to_string()
    }

    fn set_job_status(&self, name: &str, f: impl FnOnce(&mut Value)) {
        let mut inner = self.lock();
        let rv = Self::next_version(&mut inner);
        if let Some(job) = inner.jobs.get_mut(name) {
            f(&mut job["status"]);
            job["metadata"]["resourceVersion"] = rv.into();
        }
    }

    fn set_pod(&self, name: &str, f: impl FnOnce(&mut Pod)) {
        let mut inner = self.lock();
        if let Some(pod) = inner.pods.get_mut(name) {
            f(pod);
        }
    }

    fn is_deleted(&self, job: &str) -> bool {
        self.lock().deleted.iter().any(|d| d == job)
    }

    /// Deleted, or ended with its other pods still running.
    fn is_over(&self, job: &str) -> bool {
        let inner = self.lock();
        inner.deleted.iter().chain(&inner.stopped).any(|d| d == job)
    }

    /// Services that exist.
    pub(crate) fn services(&self) -> usize {
        self.lock().services.len()
    }

    /// The process ids of `job`'s running pods, by completion index.
    pub(crate) fn running_pids(&self, job: &str) -> BTreeMap<String, u32> {
        self.lock()
            .pods
            .iter()
            .filter(|(_, p)| p.job == job)
            .filter_map(|(name, p)| Some((name.clone(), p.pid?)))
            .collect()
    }

    /// The Job controller for `name`: for each completion (one, or an
    /// Indexed Job's `completions` at once), pods until one succeeds; the
    /// failure policy or the back-off limit (failures of all indexes
    /// together) fails the Job and stops its other pods.
    async fn control(self, name: String) {
        let Some(job) = self.lock().jobs.get(&name).cloned() else { return };
        let spec = &job["spec"];
        let indexed = spec["completionMode"] == "Indexed";
        let completions = if indexed { spec["completions"].as_u64().unwrap_or(1) } else { 1 };
        let shared = Arc::new(Mutex::new((0u64, 0u64)));
        let tasks: Vec<_> = (0..completions)
            .map(|index| {
                let (fake, name, shared) = (self.clone(), name.clone(), Arc::clone(&shared));
                tokio::spawn(fake.complete(name, indexed.then_some(index), completions, shared))
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    /// One completion of Job `name`; `shared` counts the Job's failures
    /// and succeeded completions.
    async fn complete(
        self,
        name: String,
        index: Option<u64>,
        completions: u64,
        shared: Arc<Mutex<(u64, u64)>>,
    ) {
        let Some(job) = self.lock().jobs.get(&name).cloned() else { return };
        let spec = &job["spec"];
        let backoff_limit = spec["backoffLimit"].as_u64().unwrap_or(6);
        let template = &spec["template"];
        let container = &template["spec"]["containers"][0];
        for attempt in 0.. {
            if self.is_over(&name) {
                return;
            }
            let pod_name = match index {
                Some(index) => format!("{name}-{index}-{attempt}"),
                None => format!("{name}-{attempt}"),
            };
            let mut labels = template["metadata"]["labels"].clone();
            labels["job-name"] = name.clone().into();
            labels["batch.kubernetes.io/job-name"] = name.clone().into();
            let mut annotations = json!({});
            if let Some(index) = index {
                labels["batch.kubernetes.io/job-completion-index"] = index.to_string().into();
                annotations["batch.kubernetes.io/job-completion-index"] = index.to_string().into();
            }
            let created = chrono::Utc::now() + chrono::Duration::milliseconds(attempt);
            let object = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": job["metadata"]["namespace"],
                    "labels": labels, "annotations": annotations,
                    "creationTimestamp": created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)},
                "spec": template["spec"],
                "status": {"phase": "Pending"},
            });
            let log = self.logs.path().join(format!("{pod_name}.log"));
            self.lock().pods.insert(
                pod_name.clone(),
                Pod { object, job: name.clone(), pid: None, log: log.clone() },
            );
            self.set_job_status(&name, |s| {
                s["active"] = (s["active"].as_u64().unwrap_or(0) + 1).into();
            });
            // Scheduling: the one node's GPUs.
            let wanted = container["resources"]["limits"]["nvidia.com/gpu"]
                .as_str()
                .and_then(|g| g.parse::<u32>().ok())
                .unwrap_or(0);
            let gpus = self.lock().gpus;
            if wanted > gpus {
                self.set_pod(&pod_name, |p| {
                    p.object["status"]["conditions"] = json!([{
                        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": format!("0/1 nodes are available: 1 Insufficient nvidia.com/gpu. (wants {wanted}, the node has {gpus})"),
                    }]);
                });
                return;
            }
            let (code, reason) =
                self.run_container(&pod_name, &name, index, &template["spec"], &log).await;
            if self.is_deleted(&name) {
                return;
            }
            let phase = if code == 0 { "Succeeded" } else { "Failed" };
            self.set_pod(&pod_name, |p| {
                p.pid = None;
                p.object["status"]["phase"] = phase.into();
                p.object["status"]["containerStatuses"] = json!([{
                    "name": container["name"], "ready": false, "restartCount": 0,
                    "image": container["image"], "imageID": "",
                    "state": {"terminated": {"exitCode": code, "reason": reason}},
                }]);
            });
            self.set_job_status(&name, |s| {
                s["active"] = s["active"].as_u64().unwrap_or(1).saturating_sub(1).into();
            });
            if self.is_over(&name) {
                return;
            }
            if code == 0 {
                let succeeded = {
                    let mut shared = shared.lock().unwrap();
                    shared.1 += 1;
                    shared.1
                };
                self.set_job_status(&name, |s| {
                    s["succeeded"] = succeeded.into();
                    if succeeded == completions {
                        s["conditions"] = json!([{"type": "Complete", "status": "True"}]);
                    }
                });
                return;
            }
            let failures = {
                let mut shared = shared.lock().unwrap();
                shared.0 += 1;
                shared.0
            };
            let policy = spec["podFailurePolicy"]["rules"].as_array().cloned().unwrap_or_default();
            let fail_job = policy.iter().any(|r| {
                r["action"] == "FailJob"
                    && r["onExitCodes"]["operator"] == "In"
                    && r["onExitCodes"]["values"]
                        .as_array()
                        .is_some_and(|v| v.contains(&json!(code)))
            });
            let (done, why, message) = if fail_job {
                (
                    true,
                    "PodFailurePolicy",
                    format!(
                        "Container {} for pod {pod_name} failed with exit code {code} matching FailJob rule at index 0",
                        container["name"].as_str().unwrap_or_default()
                    ),
                )
            } else if failures > backoff_limit {
                (
                    true,
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit".to_owned(),
                )
            } else {
                (false, "", String::new())
            };
            self.set_job_status(&name, |s| {
                s["failed"] = failures.into();
                if done {
                    s["conditions"] = json!([{"type": "Failed", "status": "True", "reason": why, "message": message}]);
                }
            });
            if done {
                self.lock().stopped.push(name.clone());
                return;
            }
        }
    }

    /// Runs the container as a child process; returns its exit code and
    /// the reason Kubernetes would give.
    async fn run_container(
        &self,
        pod: &str,
        job: &str,
        index: Option<u64>,
        spec: &Value,
        log: &std::path::Path,
    ) -> (i64, String) {
        let container = &spec["containers"][0];
        // Volumes: hostPath only, mapped by mount path.
        let mut mounts: Vec<(String, String)> = Vec::new();
        for m in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume = spec["volumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == m["name"]))
                .unwrap();
            let host =
                volume["hostPath"]["path"].as_str().expect("the fake mounts hostPath volumes");
            mounts.push((m["mountPath"].as_str().unwrap().to_owned(), host.to_owned()));
        }
        let map = |arg: &str| -> String {
            for (inside, host) in &mounts {
                if let Some(rest) = arg.strip_prefix(inside.as_str()) {
                    return format!("{host}{rest}");
                }
            }
            arg.to_owned()
        };
        let command: Vec<String> = container["command"]
            .as_array()
            .map(|c| c.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_else(|| vec![self.entry_point.display().to_string()]);
        let mut cmd = tokio::process::Command::new(&command[0]);
        cmd.args(&command[1..]);
        for arg in container["args"].as_array().into_iter().flatten() {
            cmd.arg(map(arg.as_str().unwrap()));
        }
        // The pod network: loopback for every pod, names under a Service
        // resolved to it, and the Job's own rendezvous port. A pod of a
        // subdomain starts once its Service exists (on a cluster it would
        // start and retry the name until the DNS has it).
        cmd.env("GLOO_SOCKET_IFNAME", "lo");
        if let Some(subdomain) = spec["subdomain"].as_str() {
            for _ in 0..600 {
                if self.lock().services.contains_key(subdomain) || self.is_over(job) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        let (services, port) = {
            let inner = self.lock();
            (inner.services.keys().cloned().collect::<Vec<_>>(), inner.ports.get(job).copied())
        };
        for var in container["env"].as_array().into_iter().flatten() {
            if let Some(v) = var["value"].as_str() {
                let name = var["name"].as_str().unwrap();
                let resolved =
                    v.rsplit_once('.').is_some_and(|(_, svc)| services.iter().any(|s| s == svc));
                let value = match name {
                    "MASTER_PORT" => port.map_or(v.to_owned(), |p| p.to_string()),
                    _ if resolved => "127.0.0.1".to_owned(),
                    _ => map(v),
                };
                cmd.env(name, value);
            }
        }
        if let Some(index) = index {
            cmd.env("JOB_COMPLETION_INDEX", index.to_string());
        }
        let out = std::fs::File::create(log).unwrap();
        cmd.stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        self.set_pod(pod, |p| {
            p.pid = pid;
            p.object["status"]["phase"] = "Running".into();
            p.object["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True"}]);
        });
        let limit = container["resources"]["limits"]["memory"].as_str().map(bytes);
        loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status.unwrap();
                    return match status.code() {
                        Some(0) => (0, "Completed".into()),
                        Some(code) => (code.into(), "Error".into()),
                        // Killed by a signal: 128 + its number, as a runtime reports.
                        None => (128 + i64::from(std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(9)), "Error".into()),
                    };
                }
                () = tokio::time::sleep(std::time::Duration::from_millis(20)) => {
                    let job = self.lock().pods.get(pod).map(|p| p.job.clone());
                    if job.is_none_or(|j| self.is_over(&j)) {
                        let _ = child.kill().await;
                        return (137, "Error".into());
                    }
                    if let (Some(limit), Some(pid)) = (limit, pid)
                        && rss(pid).is_some_and(|r| r > limit)
                    {
                        let _ = child.kill().await;
                        return (137, "OOMKilled".into());
                    }
                }
            }
        }
    }
}

/// A Kubernetes memory quantity in bytes (`Ki`, `Mi`, `Gi` or plain).
fn bytes(q: &str) -> u64 {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = n.parse().unwrap_or(0);
    n * match unit {
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => 1,
    }
}

/// A process's resident memory, in bytes.
fn rss(pid: u32) -> Option<u64> {
    finetune_local::train::ResidentMemory::of_process(pid).map(|m| m.now)
}

async fn gate(
    State(fake): State<FakeKube>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let line = format!("{} {}", request.method(), request.uri().path());
    {
        let mut inner = fake.lock();
        inner.requests.push(line);
        if inner.throttle > 0 {
            inner.throttle -= 1;
            inner.throttled += 1;
            let mut response = status(
                429,
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            );
            response.headers_mut().insert("retry-after", "1".parse().unwrap());
            return response;
        }
    }
    next.run(request).await
}

async fn create_job(
    State(fake): State<FakeKube>,
    Path(ns): Path<String>,
    Json(mut job): Json<Value>,
) -> Response {
    let Some(name) = job["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(422, "Invalid", "Job.batch is invalid: metadata.name: Required value");
    };
    if job["spec"]["template"]["spec"]["restartPolicy"] != "Never"
        && job["spec"]["template"]["spec"]["restartPolicy"] != "OnFailure"
    {
        return status(
            422,
            "Invalid",
            "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"",
        );
    }
    {
        let mut inner = fake.lock();
        if inner.jobs.contains_key(&name) {
            return status(409, "AlreadyExists", &format!("jobs.batch \"{name}\" already exists"));
        }
        let rv = FakeKube::next_version(&mut inner);
        job["metadata"]["namespace"] = ns.into();
        job["metadata"]["uid"] = format!("uid-{rv}").into();
        job["metadata"]["resourceVersion"] = rv.into();
        job["metadata"]["creationTimestamp"] =
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into();
        job["status"] = json!({});
        inner.deleted.retain(|d| d != &name);
        inner.stopped.retain(|d| d != &name);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        inner.ports.insert(name.clone(), port);
        inner.jobs.insert(name.clone(), job.clone());
    }
    tokio::spawn(fake.clone().control(name));
    (StatusCode::CREATED, Json(job)).into_response()
}

async fn get_job(
    State(fake): State<FakeKube>,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    match fake.lock().jobs.get(&name) {
        Some(job) => Json(job.clone()).into_response(),
        None => status(404, "NotFound", &format!("jobs.batch \"{name}\" not found")),
    }
}

/// One page of a list: `items` (by key, as etcd orders them) after the
/// continue token's key, at most `limit`, and the token for the rest. A
/// token pins the revision its list began at; once that revision is
/// compacted the token is 410 `Expired`, as the API server answers. (The
/// fake keeps no history: a later page shows the objects as they are now.)
fn page(
    inner: &mut Inner,
    kind: &str,
    items: Vec<(String, Value)>,
    q: &BTreeMap<String, String>,
) -> Response {
    let (revision, after) = match q.get("continue").filter(|t| !t.is_empty()) {
        Some(token) => {
            let Some((rv, key)) =
                token.split_once(':').and_then(|(rv, key)| Some((rv.parse::<u64>().ok()?, key)))
            else {
                return status(400, "BadRequest", "continue key is not valid");
            };
            if rv <= inner.compacted {
                inner.expired += 1;
                return status(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                );
            }
            (rv, Some(key.to_owned()))
        }
        None => (inner.resource_version, None),
    };
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|&l| l > 0);
    let mut rest: Vec<(String, Value)> =
        items.into_iter().filter(|(k, _)| after.as_ref().is_none_or(|a| k > a)).collect();
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(limit) = limit
        && rest.len() > limit
    {
        rest.truncate(limit);
        let last = rest.last().map(|(k, _)| k.clone()).unwrap_or_default();
        metadata["continue"] = format!("{revision}:{last}").into();
        if std::mem::take(&mut inner.compact_while_listing) {
            inner.compacted = inner.resource_version;
            inner.resource_version += 1;
        }
    }
    let items: Vec<Value> = rest.into_iter().map(|(_, v)| v).collect();
    let api_version = if kind == "JobList" { "batch/v1" } else { "v1" };
    Json(json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": items}))
        .into_response()
}

async fn list_jobs(
    State(fake): State<FakeKube>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut inner = fake.lock();
    let items = selected(&inner.jobs, &q);
    page(&mut inner, "JobList", items, &q)
}

async fn delete_job(
    State(fake): State<FakeKube>,
    Path((_ns, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let _ = (method, headers);
    let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut inner = fake.lock();
    let Some(job) = inner.jobs.remove(&name) else {
        return status(404, "NotFound", &format!("jobs.batch \"{name}\" not found"));
    };
    inner.deleted.push(name.clone());
    // Foreground (and Background) propagation remove the Job's pods and
    // the objects it owns; Orphan would keep them.
    if options["propagationPolicy"] != "Orphan" {
        let uid = job["metadata"]["uid"].clone();
        inner.services.retain(|_, s| {
            !s["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| o.iter().any(|r| r["uid"] == uid))
        });
        let pods: Vec<String> =
            inner.pods.iter().filter(|(_, p)| p.job == name).map(|(k, _)| k.clone()).collect();
        for pod in pods {
            if let Some(p) = inner.pods.remove(&pod)
                && let Some(pid) = p.pid
            {
                let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
    Json(job).into_response()
}

async fn list_pods(
    State(fake): State<FakeKube>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut inner = fake.lock();
    let items = inner
        .pods
        .iter()
        .filter(|(_, p)| matches(&p.object["metadata"]["labels"], q.get("labelSelector")))
        .map(|(k, p)| (k.clone(), p.object.clone()))
        .collect();
    page(&mut inner, "PodList", items, &q)
}

async fn pod_log(
    State(fake): State<FakeKube>,
    Path((_ns, name)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let Some(path) = fake.lock().pods.get(&name).map(|p| p.log.clone()) else {
        return status(404, "NotFound", &format!("pods \"{name}\" not found"));
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = q.get("tailLines").and_then(|n| n.parse::<usize>().ok()).unwrap_or(lines.len());
    let start = lines.len().saturating_sub(tail);
    (StatusCode::OK, lines[start..].join("\n") + "\n").into_response()
}

async fn create_service(
    State(fake): State<FakeKube>,
    Path(ns): Path<String>,
    Json(mut service): Json<Value>,
) -> Response {
    let Some(name) = service["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(422, "Invalid", "Service is invalid: metadata.name: Required value");
    };
    let mut inner = fake.lock();
    if inner.services.contains_key(&name) {
        return status(409, "AlreadyExists", &format!("services \"{name}\" already exists"));
    }
    let rv = FakeKube::next_version(&mut inner);
    service["metadata"]["namespace"] = ns.into();
    service["metadata"]["uid"] = format!("uid-{rv}").into();
    service["metadata"]["resourceVersion"] = rv.into();
    inner.services.insert(name, service.clone());
    (StatusCode::CREATED, Json(service)).into_response()
}

async fn get_service(
    State(fake): State<FakeKube>,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    match fake.lock().services.get(&name) {
        Some(service) => Json(service.clone()).into_response(),
        None => status(404, "NotFound", &format!("services \"{name}\" not found")),
    }
}

async fn list_services(
    State(fake): State<FakeKube>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut inner = fake.lock();
    let items = selected(&inner.services, &q);
    page(&mut inner, "ServiceList", items, &q)
}

/// The objects the query's `labelSelector` selects, by name.
fn selected(
    objects: &BTreeMap<String, Value>,
    q: &BTreeMap<String, String>,
) -> Vec<(String, Value)> {
    objects
        .iter()
        .filter(|(_, o)| matches(&o["metadata"]["labels"], q.get("labelSelector")))
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect()
}

async fn delete_service(
    State(fake): State<FakeKube>,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    match fake.lock().services.remove(&name) {
        Some(service) => Json(service).into_response(),
        None => status(404, "NotFound", &format!("services \"{name}\" not found")),
    }
}
