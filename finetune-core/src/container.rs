//! Where a local connection's training runs when it does not run in the
//! calling process: a container on a cluster, as an administrator sets it
//! up. Plain data (serde); `finetune-local` turns it into a Kubernetes Job.
//!
//! ```
//! let c: finetune_core::ContainerConfig = serde_json::from_value(serde_json::json!({
//!     "image": "registry.example.com/finetune-trainer:0.1",
//!     "namespace": "ml",
//!     "gpus": 1,
//!     "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "24Gi"}},
//!     "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
//!     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
//!     "model_cache": {"pvc": {"claim": "hf-cache"}},
//!     "output": {"pvc": {"claim": "finetune-jobs"}},
//!     "env": [{"name": "HF_TOKEN", "secret": {"name": "hf", "key": "token"}}],
//!     "active_deadline_seconds": 86400
//! }))?;
//! assert_eq!(c.gpus, 1);
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the trainer's mount paths live in the container.
pub const MODEL_CACHE_MOUNT: &str = "/models";
/// The output folder (job folders, checkpoints, metrics, models).
pub const OUTPUT_MOUNT: &str = "/output";
/// The datasets, when they come from a volume.
pub const DATASETS_MOUNT: &str = "/data";

/// A container to train in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ContainerConfig {
    /// The image holding the trainer and libtorch.
    pub image: String,
    /// The kubeconfig file naming the cluster (else `KUBECONFIG`,
    /// `~/.kube/config`, or the pod's service account in a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context (else its current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Replaces the image's entry point, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The namespace of the Job (the client's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// CPU and memory requests and limits (`cpu: "4"`, `memory: "16Gi"`).
    #[serde(default)]
    pub resources: Resources,
    /// GPUs (`nvidia.com/gpu`) per pod; 0 for a CPU-only run.
    #[serde(default)]
    pub gpus: u32,
    /// Node labels the pod must land on.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pod tolerates (GPU nodes are often tainted).
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// The pod's service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Secrets holding the registry credentials for the image.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// The model cache, mounted read-only at [`MODEL_CACHE_MOUNT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_cache: Option<Volume>,
    /// The output folder, mounted read-write at [`OUTPUT_MOUNT`]: the job
    /// spec and staged datasets go in, state, metrics, checkpoints and
    /// models come out.
    pub output: Volume,
    /// Datasets already on a volume, mounted read-only at
    /// [`DATASETS_MOUNT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datasets: Option<Volume>,
    /// Extra environment: plain values, or secrets by reference (their
    /// values never appear in the Job).
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// The longest the Job may run, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    /// How long a finished Job is kept, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Pod failures before the Job fails; each restart resumes from the
    /// newest checkpoint. 3 per replica when absent (a lost pod of a run
    /// of several fails the others too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<i32>,
    /// Pods training together, data-parallel (each with `gpus` GPUs): an
    /// Indexed Job whose pods find rank 0 through a headless Service. 1
    /// when absent.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub replicas: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl ContainerConfig {
    /// A configuration running `image` with its output on `output`.
    pub fn new(image: impl Into<String>, output: Volume) -> Self {
        Self {
            image: image.into(),
            kubeconfig: None,
            context: None,
            command: None,
            namespace: None,
            resources: Resources::default(),
            gpus: 0,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            service_account: None,
            image_pull_secrets: Vec::new(),
            model_cache: None,
            output,
            datasets: None,
            env: Vec::new(),
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
            backoff_limit: None,
            replicas: 1,
        }
    }
}

/// Requests and limits by resource name (`cpu`, `memory`,
/// `ephemeral-storage`), in Kubernetes quantities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// What the scheduler reserves.
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    /// What the container may use at most.
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

/// A taint the pod tolerates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toleration {
    /// The taint's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Exists` or `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// The taint's value (with `Equal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

/// A volume the pod mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Volume {
    /// A PersistentVolumeClaim.
    Pvc {
        /// The claim's name.
        claim: String,
        /// A folder of the volume, when not its root.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub_path: Option<String>,
    },
    /// A folder of the node (single-node clusters, tests).
    HostPath {
        /// The node's folder.
        path: String,
    },
}

/// One environment variable of the trainer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EnvVar {
    /// Its name.
    pub name: String,
    /// A plain value (not for secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A key of a Kubernetes Secret: the Job names it, never its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretKeyRef>,
}

impl EnvVar {
    /// A plain value.
    pub fn value(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self { name: name.into(), value: Some(value.into()), secret: None }
    }

    /// A Secret's key.
    pub fn secret(
        name: impl Into<String>,
        secret: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            value: None,
            secret: Some(SecretKeyRef { name: secret.into(), key: key.into() }),
        }
    }
}

/// A key of a Kubernetes Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretKeyRef {
    /// The Secret.
    pub name: String,
    /// The key.
    pub key: String,
}
