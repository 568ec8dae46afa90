//! The Job a container configuration becomes, field by field: the trainer's
//! command and arguments, GPU limits, volumes read-only where they should
//! be, secrets by reference only, back-off that resumes and a failure
//! policy that does not retry the hopeless, labels that find it again.
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used)]

use finetune_core::container::{EnvVar, Volume};
use finetune_core::{ContainerConfig, JobId};
use finetune_local::kubernetes::{JOB_LABEL, job_manifest, job_name};

fn config() -> ContainerConfig {
    serde_json::from_value(serde_json::json!({
        "image": "registry.example.com/finetune-trainer:0.1",
        "namespace": "ml",
        "gpus": 2,
        "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "24Gi"}},
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "service_account": "trainer",
        "image_pull_secrets": ["registry-creds"],
        "model_cache": {"pvc": {"claim": "hf-cache"}},
        "output": {"pvc": {"claim": "finetune-jobs", "sub_path": "team-a"}},
        "datasets": {"host_path": {"path": "/srv/datasets"}},
        "env": [
            {"name": "NCCL_DEBUG", "value": "WARN"},
            {"name": "HF_TOKEN", "secret": {"name": "hf", "key": "token"}}
        ],
        "active_deadline_seconds": 86400,
        "ttl_seconds_after_finished": 3600
    }))
    .unwrap()
}

#[test]
fn the_job_manifest_holds_the_configuration_field_by_field() {
    let id = JobId::new("local-20261206061500-1a2b3c4d");
    let job = serde_json::to_value(job_manifest(&id, &config()).unwrap()).unwrap();
    let name = job_name(&id);
    assert_eq!(name, "finetune-local-20261206061500-1a2b3c4d");
    assert_eq!(job["metadata"]["name"], name.as_str());
    assert_eq!(job["metadata"]["namespace"], "ml");
    assert_eq!(job["metadata"]["labels"]["app.kubernetes.io/managed-by"], "finetune");
    assert_eq!(job["metadata"]["labels"][JOB_LABEL], name.as_str());
    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], 3);
    assert_eq!(spec["activeDeadlineSeconds"], 86400);
    assert_eq!(spec["ttlSecondsAfterFinished"], 3600);
    let rule = &spec["podFailurePolicy"]["rules"][0];
    assert_eq!(rule["action"], "FailJob");
    assert_eq!(rule["onExitCodes"]["values"], serde_json::json!([3]));
    assert_eq!(spec["template"]["metadata"]["labels"][JOB_LABEL], name.as_str());
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["serviceAccountName"], "trainer");
    assert_eq!(pod["imagePullSecrets"][0]["name"], "registry-creds");
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.product"], "NVIDIA-H100-80GB-HBM3");
    assert_eq!(pod["tolerations"][0]["operator"], "Exists");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example.com/finetune-trainer:0.1");
    assert!(c.get("command").is_none(), "the image's entry point runs");
    assert_eq!(
        c["args"],
        serde_json::json!(["--run-job", id.as_str(), "--jobs", "/output", "--cache", "/models"])
    );
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "2");
    assert_eq!(c["resources"]["limits"]["memory"], "24Gi");
    assert_eq!(c["resources"]["requests"]["cpu"], "4");
    // Volumes: the output read-write (in its sub-path), the rest read-only.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |name: &str| mounts.iter().find(|m| m["name"] == name).unwrap().clone();
    assert_eq!(
        (mount("output")["mountPath"].as_str(), mount("output")["readOnly"].as_bool()),
        (Some("/output"), Some(false))
    );
    assert_eq!(mount("output")["subPath"], "team-a");
    assert_eq!(mount("model-cache")["readOnly"], true);
    assert_eq!(mount("datasets")["readOnly"], true);
    let volumes = pod["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap().clone();
    assert_eq!(volume("model-cache")["persistentVolumeClaim"]["readOnly"], true);
    assert_eq!(volume("output")["persistentVolumeClaim"]["claimName"], "finetune-jobs");
    assert_eq!(volume("datasets")["hostPath"]["path"], "/srv/datasets");
    // Environment: offline, the cache, plain values, secrets by reference.
    let env = c["env"].as_array().unwrap();
    let var = |name: &str| env.iter().find(|v| v["name"] == name).unwrap().clone();
    assert_eq!(var("HF_HUB_OFFLINE")["value"], "1");
    assert_eq!(var("HF_HUB_CACHE")["value"], "/models");
    assert_eq!(var("NCCL_DEBUG")["value"], "WARN");
    let token = var("HF_TOKEN");
    assert!(token.get("value").is_none(), "{token}");
    assert_eq!(
        token["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "hf", "key": "token", "optional": false})
    );
}

#[test]
fn a_cpu_job_has_no_gpu_and_names_stay_dns_labels() {
    let mut cpu = ContainerConfig::new("trainer:1", Volume::HostPath { path: "/srv/jobs".into() });
    cpu.command = Some(vec!["/usr/local/bin/finetune_local".into()]);
    let job = serde_json::to_value(job_manifest(&JobId::new("x"), &cpu).unwrap()).unwrap();
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    assert!(c["resources"].get("limits").is_none(), "{c}");
    assert_eq!(c["command"][0], "/usr/local/bin/finetune_local");
    assert_eq!(c["args"], serde_json::json!(["--run-job", "x", "--jobs", "/output"]));
    let long = JobId::new(format!("Some_Job.{}", "a".repeat(80)));
    let name = job_name(&long);
    assert!(
        name.len() <= 63
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "{name}"
    );
    assert_eq!(name, job_name(&long), "derived from the id alone");
    // An env var with both a value and a secret is refused.
    let mut both = cpu.clone();
    let mut var = EnvVar::secret("TOKEN", "s", "k");
    var.value = Some("inline".into());
    both.env.push(var);
    assert!(job_manifest(&JobId::new("x"), &both).is_err());
}
