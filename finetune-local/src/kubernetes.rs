//! The Kubernetes Job a container configuration becomes (feature
//! `kubernetes`): one pod running the trainer binary on a job recorded in
//! the output volume ([`crate::LocalProvider::record`]), restarted by the
//! Job's back-off after a crash and resuming from the newest checkpoint,
//! never restarted after a failure retrying cannot fix (exit code 3).
//!
//! The pod runs `finetune_local --run-job <id> --jobs /output [--cache
//! /models]` (the image's entry point unless the configuration gives a
//! command), with the output volume read-write and the model cache and
//! datasets read-only, `nvidia.com/gpu` in its limits, secrets referenced
//! by name and key (their values never in the Job), and labels that find
//! it again: `app.kubernetes.io/managed-by=finetune` and
//! `finetune.dev/job=<id>`.

use std::collections::BTreeMap;

use finetune_core::container::{
    ContainerConfig, DATASETS_MOUNT, MODEL_CACHE_MOUNT, OUTPUT_MOUNT, Volume as VolumeConfig,
};
use finetune_core::{Error, JobId, JobState, Result};
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, HostPathVolumeSource, LocalObjectReference,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, ResourceRequirements,
    SecretKeySelector, Service, ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The label every object of ours carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "finetune");
/// The label naming the job.
pub const JOB_LABEL: &str = "finetune.dev/job";
/// The trainer container's name.
pub const CONTAINER: &str = "trainer";
/// The trainer's exit code for a failure retrying cannot fix.
pub const EXIT_DO_NOT_RETRY: i32 = 3;
/// Pod restarts (each resuming from the newest checkpoint) unless the
/// configuration says otherwise.
pub const DEFAULT_BACKOFF_LIMIT: i32 = 3;
/// The port rank 0 serves the rendezvous store on, in a run of several
/// pods.
pub const RENDEZVOUS_PORT: u16 = 29500;

/// The Job's name for `id`: a DNS label (lowercase letters, digits and
/// `-`, at most 63 characters) derived from the id alone, so a retried
/// submit finds the Job it made.
pub fn job_name(id: &JobId) -> String {
    let mut name: String = format!("finetune-{}", id.as_str())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    name.truncate(63);
    name.trim_end_matches('-').to_owned()
}

/// The Job that trains the recorded job `id` in `config`'s container.
pub fn job_manifest(id: &JobId, config: &ContainerConfig) -> Result<Job> {
    let name = job_name(id);
    let labels: BTreeMap<String, String> =
        [(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()), (JOB_LABEL.to_owned(), name.clone())]
            .into();
    let mut volumes = vec![volume("output", &config.output, false)?];
    let mut mounts = vec![mount("output", &config.output, OUTPUT_MOUNT, false)];
    let mut args = vec!["--run-job".to_owned(), id.as_str().to_owned()];
    args.extend(["--jobs".to_owned(), OUTPUT_MOUNT.to_owned()]);
    let mut env = vec![plain("HF_HUB_OFFLINE", "1")];
    let replicas = config.replicas.max(1);
    if replicas > 1 {
        // An Indexed Job: JOB_COMPLETION_INDEX is the rank, and pod 0 is
        // `<name>-0.<name>` under the headless Service of the same name.
        env.push(plain("WORLD_SIZE", &replicas.to_string()));
        env.push(plain("MASTER_ADDR", &format!("{name}-0.{name}")));
        env.push(plain("MASTER_PORT", &RENDEZVOUS_PORT.to_string()));
    }
    if let Some(cache) = &config.model_cache {
        volumes.push(volume("model-cache", cache, true)?);
        mounts.push(mount("model-cache", cache, MODEL_CACHE_MOUNT, true));
        args.extend(["--cache".to_owned(), MODEL_CACHE_MOUNT.to_owned()]);
        env.push(plain("HF_HUB_CACHE", MODEL_CACHE_MOUNT));
    }
    if let Some(data) = &config.datasets {
        volumes.push(volume("datasets", data, true)?);
        mounts.push(mount("datasets", data, DATASETS_MOUNT, true));
    }
    for var in &config.env {
        env.push(match (&var.value, &var.secret) {
            (Some(value), None) => plain(&var.name, value),
            (None, Some(secret)) => EnvVar {
                name: var.name.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name.clone(),
                        key: secret.key.clone(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            _ => {
                return Err(Error::invalid(format!(
                    "container env `{}`: give a value or a secret, not both or neither",
                    var.name
                )));
            }
        });
    }
    let quantities = |m: &BTreeMap<String, String>| -> BTreeMap<String, Quantity> {
        m.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect()
    };
    let mut limits = quantities(&config.resources.limits);
    if config.gpus > 0 {
        limits.insert("nvidia.com/gpu".into(), Quantity(config.gpus.to_string()));
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(config.image.clone()),
        command: config.command.clone(),
        args: Some(args),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&config.resources.requests)).filter(|m| !m.is_empty()),
            limits: Some(limits).filter(|m| !m.is_empty()),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        // The Job makes a new pod after a failure; that pod resumes.
        restart_policy: Some("Never".into()),
        service_account_name: config.service_account.clone(),
        image_pull_secrets: Some(
            config
                .image_pull_secrets
                .iter()
                .map(|s| LocalObjectReference { name: s.clone() })
                .collect(),
        )
        .filter(|v: &Vec<_>| !v.is_empty()),
        node_selector: Some(config.node_selector.clone()).filter(|m| !m.is_empty()),
        tolerations: Some(
            config
                .tolerations
                .iter()
                .map(|t| Toleration {
                    key: t.key.clone(),
                    operator: t.operator.clone(),
                    value: t.value.clone(),
                    effect: t.effect.clone(),
                    ..Toleration::default()
                })
                .collect(),
        )
        .filter(|v: &Vec<_>| !v.is_empty()),
        volumes: Some(volumes),
        subdomain: (replicas > 1).then(|| name.clone()),
        ..PodSpec::default()
    };
    let replicas = i32::try_from(replicas).map_err(|_| Error::invalid("replicas: too many"))?;
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: config.namespace.clone(),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            // A lost pod of a run of several fails the others too: each
            // replica gets the default's restarts.
            backoff_limit: Some(
                config.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT.saturating_mul(replicas)),
            ),
            active_deadline_seconds: config.active_deadline_seconds,
            ttl_seconds_after_finished: config.ttl_seconds_after_finished,
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "FailJob".into(),
                    on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                        container_name: Some(CONTAINER.into()),
                        operator: "In".into(),
                        values: vec![EXIT_DO_NOT_RETRY],
                    }),
                    ..PodFailurePolicyRule::default()
                }],
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(pod),
            },
            completion_mode: (replicas > 1).then(|| "Indexed".to_owned()),
            completions: (replicas > 1).then_some(replicas),
            parallelism: (replicas > 1).then_some(replicas),
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

/// The headless Service that gives the pods of a run of several replicas
/// their DNS names (`<name>-<index>.<name>`), owned by the Job so that it
/// goes with it.
pub fn service_manifest(id: &JobId, owner: &Job) -> Service {
    let name = job_name(id);
    let owner = OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: owner.metadata.name.clone().unwrap_or_default(),
        uid: owner.metadata.uid.clone().unwrap_or_default(),
        block_owner_deletion: Some(true),
        controller: Some(false),
    };
    Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                [
                    (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                    (JOB_LABEL.to_owned(), name.clone()),
                ]
                .into(),
            ),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some([(JOB_LABEL.to_owned(), name)].into()),
            // Rank 0's name resolves before any readiness.
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn plain(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() }
}

fn mount(name: &str, config: &VolumeConfig, path: &str, read_only: bool) -> VolumeMount {
    let sub_path = match config {
        VolumeConfig::Pvc { sub_path, .. } => sub_path.clone(),
        _ => None,
    };
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        sub_path,
        ..VolumeMount::default()
    }
}

fn volume(name: &str, config: &VolumeConfig, read_only: bool) -> Result<Volume> {
    Ok(match config {
        VolumeConfig::Pvc { claim, .. } => Volume {
            name: name.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(read_only),
            }),
            ..Volume::default()
        },
        VolumeConfig::HostPath { path } => Volume {
            name: name.into(),
            host_path: Some(HostPathVolumeSource {
                path: path.clone(),
                type_: Some("Directory".into()),
            }),
            ..Volume::default()
        },
        other => {
            return Err(Error::Unsupported {
                message: format!("the `{name}` volume: {other:?} is not supported"),
            });
        }
    })
}

/// The annotation holding the job id the Job trains.
pub const JOB_ID_ANNOTATION: &str = "finetune.dev/job-id";

/// Log lines of a failed trainer quoted in the job's failure.
const LOG_LINES: i64 = 20;

/// The local provider on a cluster: `submit` records the job in the output
/// volume (validated, its data staged) and creates a Kubernetes Job that
/// runs the trainer on it in the configured container; `job` reads the
/// Job, its pods and the job's folder; `cancel` deletes the Job with its
/// pods. This process must see the output volume at its runtime's output
/// root (and the model cache, to validate).
pub struct KubernetesProvider {
    local: crate::LocalProvider,
    client: kube::Client,
    namespace: String,
    container: ContainerConfig,
    page_size: u32,
}

impl std::fmt::Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvider")
            .field("namespace", &self.namespace)
            .field("image", &self.container.image)
            .finish_non_exhaustive()
    }
}

fn kube_error(what: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(status) if status.code == 404 => {
            Error::NotFound { what: format!("{what}: {}", status.message) }
        }
        kube::Error::Api(status) if status.code == 429 => {
            Error::RateLimited { retry_after: None, message: format!("{what}: {}", status.message) }
        }
        kube::Error::Api(status) if status.code >= 500 => {
            Error::Transient { message: format!("{what}: {} ({})", status.message, status.code) }
        }
        kube::Error::Api(status) => Error::Provider {
            status: Some(status.code),
            code: Some(status.reason.clone()),
            message: format!("{what}: {}", status.message),
            param: None,
        },
        other => Error::other(format!("Kubernetes API: {what}"), other),
    }
}

impl KubernetesProvider {
    /// A provider submitting to the cluster `client` talks to, recording
    /// jobs through `local` (whose output root is the output volume).
    pub fn new(
        local: crate::LocalProvider,
        client: kube::Client,
        container: ContainerConfig,
    ) -> Self {
        let namespace =
            container.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
        Self { local, client, namespace, container, page_size: 500 }
    }

    /// Lists in pages of `n` objects (500 unless set; the API's `limit`).
    #[must_use]
    pub fn with_list_page_size(mut self, n: u32) -> Self {
        self.page_size = n.max(1);
        self
    }

    /// Every object `api` lists under `selector`, page by page (`limit`
    /// and `continue`). A continue token the API has expired (410 Gone:
    /// the revision it pinned was compacted away) starts the list again,
    /// at most three times: a list is one consistent snapshot, so the
    /// pages already read are dropped.
    async fn list_all<K>(&self, api: &kube::Api<K>, what: &str, selector: &str) -> Result<Vec<K>>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let mut restarts = 0;
        'list: loop {
            let mut items = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let mut params =
                    kube::api::ListParams::default().labels(selector).limit(self.page_size);
                if let Some(token) = &token {
                    params = params.continue_token(token);
                }
                let page = self
                    .retried(what, || {
                        let (api, params) = (api.clone(), params.clone());
                        async move { api.list(&params).await }
                    })
                    .await;
                match page {
                    Ok(page) => {
                        items.extend(page.items);
                        match page.metadata.continue_ {
                            Some(next) if !next.is_empty() => token = Some(next),
                            _ => return Ok(items),
                        }
                    }
                    Err(Error::Provider { status: Some(410), .. }) if restarts < 3 => {
                        restarts += 1;
                        tracing::debug!(
                            what,
                            restarts,
                            "list continue token expired; listing again"
                        );
                        continue 'list;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    fn jobs(&self) -> kube::Api<Job> {
        kube::Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn services(&self) -> kube::Api<Service> {
        kube::Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pods(&self) -> kube::Api<k8s_openapi::api::core::v1::Pod> {
        kube::Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The job id a spec gets: derived from the spec alone, so submitting
    /// the same spec again (a retry after a lost answer, a restarted
    /// caller) finds the job and Job it made.
    pub fn job_id(spec: &finetune_core::JobSpec) -> JobId {
        use sha2::{Digest, Sha256};
        let text = serde_json::to_string(spec).unwrap_or_default();
        let digest = Sha256::digest(text.as_bytes());
        JobId::new(format!(
            "k8s-{}",
            digest.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>()
        ))
    }

    /// Calls `f` again while the API answers 429 or 5xx (with back-off),
    /// at most five times.
    async fn retried<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, kube::Error>>,
    {
        let mut wait = std::time::Duration::from_millis(200);
        for attempt in 1.. {
            match f().await {
                Ok(v) => return Ok(v),
                Err(kube::Error::Api(s)) if (s.code == 429 || s.code >= 500) && attempt < 5 => {
                    tracing::debug!(what, code = s.code, attempt, "Kubernetes API busy; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => return Err(kube_error(what, e)),
            }
        }
        unreachable!("the loop returns")
    }

    /// The pod wrote the model's paths as it mounts the volumes (`/output`,
    /// `/models`): here they are under the output root and the cache.
    fn on_this_side(&self, model: &mut finetune_core::FineTunedModel) {
        let runtime = self.local.runtime();
        let mounts = [
            (OUTPUT_MOUNT, runtime.output_root.as_path()),
            (MODEL_CACHE_MOUNT, runtime.cache.root()),
        ];
        let map = |path: &std::path::Path| -> Option<std::path::PathBuf> {
            mounts.iter().find_map(|(inside, here)| {
                let rest = path.strip_prefix(inside).ok()?;
                Some(here.join(rest))
            })
        };
        if let finetune_core::ModelArtifacts::LocalDir { path } = &mut model.artifacts
            && let Some(here) = map(path)
        {
            *path = here;
        }
        for key in ["output_dir", "base_model_dir", "adapter_dir", "merged_dir"] {
            if let Some(value) = model.metadata.get_mut(key)
                && let Some(here) = map(std::path::Path::new(value.as_str()))
            {
                *value = here.display().to_string();
            }
        }
    }

    /// The state the Job and its pods say, given the job's record.
    async fn state_of(&self, id: &JobId, recorded: &finetune_core::Job) -> Result<JobState> {
        if recorded.state.is_terminal() {
            return Ok(recorded.state.clone());
        }
        let name = job_name(id);
        let Some(job) = self
            .retried("reading the Job", || {
                let (api, name) = (self.jobs(), name.clone());
                async move { api.get_opt(&name).await }
            })
            .await?
        else {
            // Recorded but no Job (yet, or deleted): the record says.
            return Ok(recorded.state.clone());
        };
        let status = job.status.unwrap_or_default();
        let condition = |kind: &str| {
            status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == kind && c.status == "True")
                .cloned()
        };
        let selector = format!("{JOB_LABEL}={name}");
        let mut pods = self.list_all(&self.pods(), "listing the pods", &selector).await?;
        // Oldest first; pods made in the same second by name (`<job>-<n>`).
        pods.sort_by_key(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            (p.metadata.creation_timestamp.clone().map(|t| t.0), name.len(), name)
        });
        if let Some(failed) = condition("Failed") {
            let mut reason = format!(
                "{}: {}",
                failed.reason.clone().unwrap_or_default(),
                failed.message.clone().unwrap_or_default()
            );
            let mut code = failed.reason.clone();
            if let Some(pod) = pods.last() {
                let terminated = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER))
                    .and_then(|c| c.state.as_ref()?.terminated.clone());
                if let Some(t) = terminated {
                    let why = t.reason.clone().unwrap_or_default();
                    reason =
                        format!("{reason}; the trainer's last exit: {why} (code {})", t.exit_code);
                    if why == "OOMKilled" {
                        code = Some(why);
                    }
                }
                let name = pod.metadata.name.clone().unwrap_or_default();
                let params = kube::api::LogParams {
                    container: Some(CONTAINER.into()),
                    tail_lines: Some(LOG_LINES),
                    ..kube::api::LogParams::default()
                };
                if let Ok(log) = self.pods().logs(&name, &params).await
                    && !log.trim().is_empty()
                {
                    reason = format!("{reason}\n{}", log.trim_end());
                }
            }
            // A failure the trainer recorded itself says more.
            if let JobState::Failed { .. } = recorded.state {
                return Ok(recorded.state.clone());
            }
            return Ok(JobState::Failed { reason, code });
        }
        if condition("Complete").is_some() {
            // The trainer writes the final record before it exits.
            return Ok(self.local.recorded(id)?.map_or(recorded.state.clone(), |j| j.state));
        }
        let pending = pods.iter().rev().find_map(|p| {
            let status = p.status.as_ref()?;
            if status.phase.as_deref() != Some("Pending") {
                return None;
            }
            status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .map(|c| {
                    format!(
                        "{}: {}",
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default()
                    )
                })
        });
        if let Some(reason) = pending {
            return Ok(JobState::Pending { reason });
        }
        Ok(match &recorded.state {
            JobState::Running { .. } => recorded.state.clone(),
            _ if status.active.unwrap_or(0) > 0 => {
                JobState::Running { progress: Default::default() }
            }
            other => other.clone(),
        })
    }
}

#[async_trait::async_trait]
impl finetune_core::FineTuneProvider for KubernetesProvider {
    fn name(&self) -> &str {
        self.local.name()
    }

    fn capabilities(&self) -> finetune_core::Capabilities {
        self.local.capabilities()
    }

    async fn validate(&self, spec: &finetune_core::JobSpec) -> Result<()> {
        self.local.validate(spec).await?;
        job_manifest(&Self::job_id(spec), &self.container).map(|_| ())
    }

    fn data_rules(&self, spec: &finetune_core::JobSpec) -> Option<finetune_core::DataRules> {
        self.local.data_rules(spec)
    }

    async fn token_counter(
        &self,
        spec: &finetune_core::JobSpec,
    ) -> Result<Option<std::sync::Arc<dyn finetune_core::TokenCounter>>> {
        self.local.token_counter(spec).await
    }

    async fn submit(&self, spec: &finetune_core::JobSpec) -> Result<finetune_core::Job> {
        let id = Self::job_id(spec);
        let mut manifest = job_manifest(&id, &self.container)?;
        manifest
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(JOB_ID_ANNOTATION.into(), id.as_str().into());
        let job = self.local.record_as(spec, &id).await?;
        let created = self
            .retried("creating the Job", || {
                let (api, manifest) = (self.jobs(), manifest.clone());
                async move { api.create(&kube::api::PostParams::default(), &manifest).await }
            })
            .await;
        let created = match created {
            Ok(created) => {
                tracing::info!(job = %id, name = %job_name(&id), "Kubernetes Job created");
                Some(created)
            }
            // Made by an earlier submit of the same spec.
            Err(Error::Provider { status: Some(409), .. }) => {
                tracing::info!(job = %id, "the Kubernetes Job exists already");
                None
            }
            Err(e) => return Err(e),
        };
        if self.container.replicas > 1 {
            // The Service is owned by the Job (deleted with it): it needs the
            // Job's uid, read back when an earlier submit made the Job.
            let owner = match created {
                Some(created) => created,
                None => {
                    let name = job_name(&id);
                    self.retried("reading the Job", || {
                        let (api, name) = (self.jobs(), name.clone());
                        async move { api.get(&name).await }
                    })
                    .await?
                }
            };
            let service = service_manifest(&id, &owner);
            let made = self
                .retried("creating the Service", || {
                    let (api, service) = (self.services(), service.clone());
                    async move { api.create(&kube::api::PostParams::default(), &service).await }
                })
                .await;
            match made {
                Ok(_) | Err(Error::Provider { status: Some(409), .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(job)
    }

    async fn job(&self, id: &JobId) -> Result<finetune_core::Job> {
        let recorded = self
            .local
            .recorded(id)?
            .ok_or_else(|| Error::NotFound { what: format!("job {id}") })?;
        // A pod that was still writing when its Job was deleted may have
        // recorded a step after the cancel: the cancel stands.
        if !recorded.state.is_terminal() && self.local.cancel_requested(id)? {
            return Ok(finetune_core::Job { state: JobState::Cancelled, ..recorded });
        }
        let state = match self.state_of(id, &recorded).await? {
            JobState::Succeeded { mut model } => {
                self.on_this_side(&mut model);
                JobState::Succeeded { model }
            }
            other => other,
        };
        Ok(finetune_core::Job { state, ..recorded })
    }

    async fn metrics(&self, id: &JobId) -> Result<finetune_core::LossCurve> {
        let folder = crate::job_folder::JobFolder::of(self.local.output_root(), id)?;
        let path = folder.dir.join("metrics.jsonl");
        let mut curve = finetune_core::LossCurve::new();
        if path.is_file() {
            for line in crate::train::read_metrics(&path)? {
                curve.upsert(line.point());
            }
        }
        Ok(curve)
    }

    async fn cancel(&self, id: &JobId) -> Result<JobState> {
        let recorded = self
            .local
            .recorded(id)?
            .ok_or_else(|| Error::NotFound { what: format!("job {id}") })?;
        if recorded.state.is_terminal() {
            return match recorded.state {
                JobState::Cancelled => Ok(JobState::Cancelled),
                other => Err(Error::invalid(format!("job {id} has already {}", other.name()))),
            };
        }
        // A pod that runs on (its grace period) stops at its next step, and
        // none started later trains.
        self.local.request_cancel(id)?;
        let name = job_name(id);
        let deleted = self
            .retried("deleting the Job", || {
                let (api, name) = (self.jobs(), name.clone());
                async move { api.delete(&name, &kube::api::DeleteParams::foreground()).await }
            })
            .await;
        match deleted {
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        self.local.set_recorded_state(id, JobState::Cancelled)?;
        Ok(JobState::Cancelled)
    }

    async fn list_jobs(
        &self,
        query: &finetune_core::ListJobs,
    ) -> Result<finetune_core::Page<finetune_core::Job>> {
        let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let listed = self.list_all(&self.jobs(), "listing the Jobs", &selector).await?;
        let mut jobs = Vec::new();
        for item in listed {
            let Some(id) =
                item.metadata.annotations.as_ref().and_then(|a| a.get(JOB_ID_ANNOTATION))
            else {
                continue;
            };
            if let Ok(job) = self.job(&JobId::new(id.clone())).await {
                jobs.push(job);
            }
        }
        Ok(crate::provider::page_of(jobs, query))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_model_the_pod_wrote_is_found_under_the_output_root_and_cache() {
        let runtime = crate::Runtime {
            output_root: "/srv/jobs".into(),
            cache: crate::ModelCache::at("/srv/models"),
            ..crate::Runtime::default()
        };
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap()))
                .unwrap();
        let provider = KubernetesProvider::new(
            crate::LocalProvider::new(runtime),
            client,
            ContainerConfig::new("trainer:1", VolumeConfig::HostPath { path: "/srv/jobs".into() }),
        );
        let metadata = [
            ("output_dir", "/output/job-1"),
            ("merged_dir", "/output/job-1/merged"),
            ("base_model_dir", "/models/models--acme--tiny/snapshots/abc"),
            ("adapter_dir", "/elsewhere/adapter"),
            ("seed", "3"),
        ];
        let mut model = finetune_core::FineTunedModel {
            provider: "local".into(),
            model_id: "job-1".into(),
            base_model: "acme/tiny".into(),
            job_id: None,
            created_at: chrono::Utc::now(),
            requires_deployment: false,
            artifacts: finetune_core::ModelArtifacts::LocalDir {
                path: "/output/job-1/merged".into(),
            },
            loss_curve: finetune_core::LossCurve::new(),
            metadata: metadata.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        };
        provider.on_this_side(&mut model);
        let finetune_core::ModelArtifacts::LocalDir { path } = &model.artifacts else {
            unreachable!()
        };
        assert_eq!(path, std::path::Path::new("/srv/jobs/job-1/merged"));
        assert_eq!(model.metadata["output_dir"], "/srv/jobs/job-1");
        assert_eq!(model.metadata["merged_dir"], "/srv/jobs/job-1/merged");
        assert_eq!(
            model.metadata["base_model_dir"],
            "/srv/models/models--acme--tiny/snapshots/abc"
        );
        // Paths outside the mounts, and values that are no paths, stay.
        assert_eq!(model.metadata["adapter_dir"], "/elsewhere/adapter");
        assert_eq!(model.metadata["seed"], "3");
    }
}
