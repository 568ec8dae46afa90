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
use finetune_core::{Error, JobId, Result};
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, HostPathVolumeSource, LocalObjectReference,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, ResourceRequirements,
    SecretKeySelector, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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
        ..PodSpec::default()
    };
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: config.namespace.clone(),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(config.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT)),
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
            ..JobSpec::default()
        }),
        ..Job::default()
    })
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
