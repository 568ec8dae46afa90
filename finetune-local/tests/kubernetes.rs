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

#[test]
fn replicas_make_an_indexed_job_whose_pods_find_rank_0_under_a_headless_service() {
    let mut config = config();
    config.replicas = 2;
    let id = JobId::new("run-2");
    let manifest = job_manifest(&id, &config).unwrap();
    let name = job_name(&id);
    let job = serde_json::to_value(&manifest).unwrap();
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!((spec["completions"].as_i64(), spec["parallelism"].as_i64()), (Some(2), Some(2)));
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["subdomain"], name.as_str());
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let var = |n: &str| env.iter().find(|v| v["name"] == n).map(|v| v["value"].clone());
    assert_eq!(var("WORLD_SIZE"), Some("2".into()));
    assert_eq!(var("MASTER_ADDR"), Some(format!("{name}-0.{name}").into()));
    assert_eq!(var("MASTER_PORT"), Some("29500".into()));
    assert_eq!(spec["backoffLimit"], 6, "3 per replica");
    // Each pod keeps its GPUs.
    assert_eq!(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], "2");
    let mut created = manifest;
    created.metadata.uid = Some("uid-7".into());
    let service =
        serde_json::to_value(finetune_local::kubernetes::service_manifest(&id, &created)).unwrap();
    assert_eq!(service["metadata"]["name"], name.as_str());
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(service["spec"]["selector"][JOB_LABEL], name.as_str());
    let owner = &service["metadata"]["ownerReferences"][0];
    assert_eq!((owner["kind"].as_str(), owner["uid"].as_str()), (Some("Job"), Some("uid-7")));
    // One replica: the plain Job of before.
    let one = serde_json::to_value(job_manifest(&id, &self::config()).unwrap()).unwrap();
    assert!(one["spec"].get("completionMode").is_none(), "{one}");
    let env = one["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    assert!(!env.iter().any(|v| v["name"] == "WORLD_SIZE"));
}

mod fake_kube;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fake_kube::FakeKube;
use finetune_core::{DatasetSource, FineTuneProvider, JobSpec, JobState};
use finetune_local::kubernetes::KubernetesProvider;
use finetune_local::{LocalProvider, Runtime};

/// The trainer binary (the image's entry point): the `finetune_local`
/// example, built when missing.
fn trainer() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // With the features the example tests build it with (a data-parallel
    // trainer when this crate's `distributed` feature is on).
    let mut features = vec!["kubernetes"];
    if cfg!(feature = "distributed") {
        features.push("distributed");
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "-q", "--manifest-path"])
        .arg(root.join("examples/Cargo.toml"))
        .args(["--example", "finetune_local", "--features", &features.join(",")])
        .status()
        .unwrap();
    assert!(status.success());
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), PathBuf::from);
    target.join("debug/examples/finetune_local")
}

fn spec() -> JobSpec {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).canonicalize().unwrap();
    let model = root.join("tests/fixtures/models/llama");
    let data = root.join("../examples/data/reverse-words.jsonl").canonicalize().unwrap();
    JobSpec::new(model.to_str().unwrap(), DatasetSource::new(data.to_str().unwrap()).unwrap())
        .with_hyperparameters(finetune_core::Hyperparameters {
            epochs: finetune_core::Setting::Value(6),
            batch_size: finetune_core::Setting::Value(8),
            ..Default::default()
        })
        .with_extra("checkpoint_every", 2)
        .with_extra("lora_dropout", 0.1)
}

fn cluster(
    fake: &FakeKube,
    jobs: &Path,
    tweak: impl FnOnce(&mut ContainerConfig),
) -> KubernetesProvider {
    std::fs::create_dir_all(jobs).unwrap();
    let local = LocalProvider::new(Runtime {
        output_root: jobs.to_owned(),
        threads: Some(1),
        ..Runtime::default()
    });
    let mut container = ContainerConfig::new(
        "registry.example.com/finetune-trainer:test",
        Volume::HostPath { path: jobs.display().to_string() },
    );
    container.env =
        vec![EnvVar::value("FINETUNE_DEVICE", "cpu"), EnvVar::value("FINETUNE_THREADS", "1")];
    tweak(&mut container);
    KubernetesProvider::new(local, fake.client(), container)
}

async fn wait_for(
    provider: &KubernetesProvider,
    id: &JobId,
    what: &str,
    done: impl Fn(&JobState) -> bool,
) -> JobState {
    let started = Instant::now();
    loop {
        let state = provider.job(id).await.unwrap().state;
        if done(&state) {
            return state;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "waiting for {what}: {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn adapter(dir: &Path) -> Vec<(String, finetune_local::tch::Tensor)> {
    let path = dir.join("adapter/adapter_model.safetensors");
    let mut t = finetune_local::tch::Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// Trains `spec` in this process, uninterrupted; returns its job folder.
async fn uninterrupted(spec: &JobSpec, root: &Path) -> PathBuf {
    let local = LocalProvider::new(Runtime {
        output_root: root.to_owned(),
        threads: Some(1),
        ..Runtime::default()
    });
    let job = local.submit(spec).await.unwrap();
    let started = Instant::now();
    while !local.job(&job.id).await.unwrap().state.is_terminal() {
        assert!(started.elapsed() < Duration::from_secs(300));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    root.join(job.id.as_str())
}

/// The adapters two job folders hold differ by less than `tolerance`.
fn assert_same_adapter(a: &Path, b: &Path, tolerance: f64) {
    let (a, b) = (adapter(a), adapter(b));
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let diff = (ta - tb).abs().max().double_value(&[]);
        assert!(diff < tolerance, "{na}: {diff}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_trains_in_its_pod_survives_a_killed_pod_and_ends_with_the_uninterrupted_adapter() {
    let fake = FakeKube::start(trainer(), 0).await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    let provider = cluster(&fake, &jobs, |_| {});
    // Two throttled answers are ridden out.
    fake.throttle(2);
    let job = provider.submit(&spec()).await.unwrap();
    assert_eq!(fake.throttled(), 2);
    let name = job_name(&job.id);
    // A retried submit finds the job and its Job: no second one.
    let again = provider.submit(&spec()).await.unwrap();
    assert_eq!(again.id, job.id);
    assert_eq!(fake.objects().0, 1);
    // Kill the pod (SIGKILL) once two checkpoints are on disk.
    let checkpoints = jobs.join(job.id.as_str()).join("checkpoints");
    wait_for(&provider, &job.id, "two checkpoints", |_| {
        std::fs::read_dir(&checkpoints).map_or(0, |d| d.count()) >= 2
    })
    .await;
    let running = provider.job(&job.id).await.unwrap().state;
    assert!(matches!(running, JobState::Running { .. }), "{running:?}");
    let pid = fake.running_pid(&name).expect("a running pod");
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let end = wait_for(&provider, &job.id, "the end", JobState::is_terminal).await;
    let JobState::Succeeded { model } = end else { panic!("{end:?}") };
    assert_eq!(fake.pods_of(&name), 2, "the Job made a second pod after the kill");
    assert!(!provider.metrics(&job.id).await.unwrap().is_empty());
    assert_eq!(model.job_id.as_ref(), Some(&job.id));
    // The same spec trained in one uninterrupted process.
    let whole = uninterrupted(&spec(), &dir.path().join("whole")).await;
    assert_same_adapter(&jobs.join(job.id.as_str()), &whole, 1e-6);
    // Listed by label.
    let listed = provider.list_jobs(&Default::default()).await.unwrap();
    assert_eq!(listed.items.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), [job.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_job_is_pending_with_the_reason_and_cancel_leaves_nothing() {
    let fake = FakeKube::start(trainer(), 0).await;
    let dir = tempfile::tempdir().unwrap();
    let provider = cluster(&fake, &dir.path().join("jobs"), |c| c.gpus = 1);
    let job = provider.submit(&spec()).await.unwrap();
    let state =
        wait_for(&provider, &job.id, "pending", |s| matches!(s, JobState::Pending { .. })).await;
    let JobState::Pending { reason } = state else { unreachable!() };
    assert!(
        reason.contains("Unschedulable") && reason.contains("Insufficient nvidia.com/gpu"),
        "{reason}"
    );
    assert_eq!(provider.cancel(&job.id).await.unwrap(), JobState::Cancelled);
    assert_eq!(fake.objects(), (0, 0), "no Job or Pod of ours is left");
    assert_eq!(provider.job(&job.id).await.unwrap().state, JobState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_over_its_memory_limit_fails_the_job_as_oom_killed() {
    let fake = FakeKube::start(trainer(), 0).await;
    let dir = tempfile::tempdir().unwrap();
    let provider = cluster(&fake, &dir.path().join("jobs"), |c| {
        c.resources.limits.insert("memory".into(), "64Mi".into());
        c.backoff_limit = Some(0);
    });
    let job = provider.submit(&spec()).await.unwrap();
    let state = wait_for(&provider, &job.id, "failure", JobState::is_terminal).await;
    let JobState::Failed { reason, code } = state else { panic!("{state:?}") };
    assert_eq!(code.as_deref(), Some("OOMKilled"), "{reason}");
    assert!(reason.contains("BackoffLimitExceeded") && reason.contains("OOMKilled"), "{reason}");
}

#[cfg(feature = "distributed")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_train_as_an_indexed_job_to_the_adapter_of_one_process() {
    let fake = FakeKube::start(trainer(), 0).await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    let provider = cluster(&fake, &jobs, |c| c.replicas = 2);
    // No dropout: the ranks' micro-batches draw other masks than one
    // process's.
    let spec = spec().with_extra("lora_dropout", 0.0);
    let job = provider.submit(&spec).await.unwrap();
    let name = job_name(&job.id);
    assert_eq!(fake.services(), 1, "the headless Service pod 0 is found under");
    let end = wait_for(&provider, &job.id, "the end", JobState::is_terminal).await;
    let JobState::Succeeded { model } = end else { panic!("{end:?}") };
    assert_eq!(fake.pods_of(&name), 2, "one pod per index");
    // Rank 0 alone wrote the folder: one metrics line per step.
    let folder = jobs.join(job.id.as_str());
    let steps = model.loss_curve.train_series().len();
    let lines = std::fs::read_to_string(folder.join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(lines, steps);
    // One process with the same spec (the global batch) trains the same
    // adapter.
    let whole = uninterrupted(&spec, &dir.path().join("whole")).await;
    assert_same_adapter(&folder, &whole, 1e-5);
    // A pod killed mid-run fails the other rank's pod too; both are made
    // again and resume from the newest checkpoint, to the same adapter.
    let spec = spec.with_seed(5);
    let job = provider.submit(&spec).await.unwrap();
    let name = job_name(&job.id);
    let checkpoints = jobs.join(job.id.as_str()).join("checkpoints");
    wait_for(&provider, &job.id, "two checkpoints", |_| {
        std::fs::read_dir(&checkpoints).map_or(0, |d| d.count()) >= 2
    })
    .await;
    let (pod, pid) = fake
        .running_pids(&name)
        .into_iter()
        .find(|(pod, _)| pod.starts_with(&format!("{name}-1-")))
        .expect("rank 1's pod runs");
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let end = wait_for(&provider, &job.id, "the end", JobState::is_terminal).await;
    assert!(matches!(end, JobState::Succeeded { .. }), "{end:?} (killed {pod})");
    assert!(fake.pods_of(&name) >= 4, "both indexes ran again: {}", fake.pods_of(&name));
    let whole = uninterrupted(&spec, &dir.path().join("whole-5")).await;
    assert_same_adapter(&jobs.join(job.id.as_str()), &whole, 1e-5);
    // A cancelled run of several pods leaves no Job, Pod or Service.
    let stuck = cluster(&fake, &dir.path().join("stuck"), |c| {
        c.replicas = 2;
        c.gpus = 1;
    });
    let pending = stuck.submit(&spec.clone().with_seed(9)).await.unwrap();
    assert_eq!(fake.services(), 3);
    wait_for(&stuck, &pending.id, "pending", |s| matches!(s, JobState::Pending { .. })).await;
    assert_eq!(stuck.cancel(&pending.id).await.unwrap(), JobState::Cancelled);
    assert_eq!(fake.services(), 2, "the cancelled Job's Service went with it");
    assert_eq!(fake.pods_of(&job_name(&pending.id)), 0);
}

/// Submits a job that stays Pending (it wants a GPU the node lacks) for
/// each seed: Jobs to list without running a trainer.
async fn pending_jobs(provider: &KubernetesProvider, seeds: std::ops::Range<u64>) -> Vec<JobId> {
    let mut ids = Vec::new();
    for seed in seeds {
        ids.push(provider.submit(&spec().with_seed(seed)).await.unwrap().id);
    }
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_and_start_again_when_the_continue_token_expires() {
    let fake = FakeKube::start(trainer(), 0).await;
    let dir = tempfile::tempdir().unwrap();
    let provider = cluster(&fake, &dir.path().join("jobs"), |c| c.gpus = 1).with_list_page_size(2);
    let ids = pending_jobs(&provider, 0..5).await;
    assert_eq!(fake.objects().0, 5, "one Job per spec");
    let listed = |page: finetune_core::Page<finetune_core::Job>| {
        let mut ids: Vec<JobId> = page.items.into_iter().map(|j| j.id).collect();
        ids.sort();
        ids
    };
    // Three pages of Jobs.
    let before = fake.requests().iter().filter(|r| r.ends_with("/jobs")).count();
    assert_eq!(listed(provider.list_jobs(&Default::default()).await.unwrap()), ids);
    let pages = fake.requests().iter().filter(|r| r.ends_with("/jobs")).count() - before;
    assert_eq!(pages, 3);
    // The store is compacted after the first page: the token the client
    // holds is 410 Expired, and the list starts again from the top.
    fake.compact_while_listing();
    assert_eq!(listed(provider.list_jobs(&Default::default()).await.unwrap()), ids);
    assert_eq!(fake.expired(), 1);
    for id in &ids {
        assert!(matches!(provider.job(id).await.unwrap().state, JobState::Pending { .. }));
        assert_eq!(provider.cancel(id).await.unwrap(), JobState::Cancelled);
    }
    assert_eq!(fake.objects(), (0, 0));
    assert!(provider.list_jobs(&Default::default()).await.unwrap().items.is_empty());
}

/// The cluster provider through the core conformance suite: each job's pod
/// is the trainer binary (run by the fake API, or in a real cluster).
struct ClusterHarness {
    fake: Option<FakeKube>,
    provider: KubernetesProvider,
    /// The datasets (the controller stages them on the output volume).
    data: tempfile::TempDir,
    jobs: PathBuf,
    model: String,
    seed: std::sync::atomic::AtomicU64,
}

impl ClusterHarness {
    fn new(provider: KubernetesProvider, fake: Option<FakeKube>, jobs: &Path, model: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let write = |name: &str, rows: usize, offset: usize| {
            let text: String = (offset..offset + rows)
                .map(|n| {
                    format!(
                        "{{\"prompt\":\"What is {n} plus one?\",\"completion\":\"{}\"}}\n",
                        n + 1
                    )
                })
                .collect();
            std::fs::write(data.path().join(name), text).unwrap();
        };
        write("train.jsonl", 12, 0);
        write("valid.jsonl", 4, 100);
        let (jobs, model) = (jobs.to_owned(), model.to_owned());
        Self { fake, provider, data, jobs, model, seed: 0.into() }
    }

    fn spec(&self, model: &str) -> JobSpec {
        let path =
            |name: &str| DatasetSource::new(self.data.path().join(name).to_str().unwrap()).unwrap();
        // A new seed each time: a new request, so a new job (the same
        // spec would find the job it made).
        let seed = self.seed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        JobSpec::new(model, path("train.jsonl"))
            .with_validation(path("valid.jsonl"))
            .with_seed(seed)
            .with_hyperparameters(finetune_core::Hyperparameters {
                epochs: finetune_core::Setting::Value(2),
                batch_size: finetune_core::Setting::Value(4),
                ..Default::default()
            })
            .with_extra("lora_r", 4)
            .with_extra("max_length", 128)
    }
}

#[async_trait::async_trait]
impl finetune_core::testing::ConformanceHarness for ClusterHarness {
    fn provider(&self) -> &dyn FineTuneProvider {
        &self.provider
    }

    fn valid_spec(&self) -> JobSpec {
        self.spec(&self.model)
    }

    fn invalid_spec(&self) -> JobSpec {
        self.spec("acme/no-such-model")
    }

    /// Anything staged for a job (its folder on the output volume) or sent
    /// to the cluster (a Job created, where the fake can tell).
    async fn uploads(&self) -> u64 {
        let folders = std::fs::read_dir(&self.jobs).map_or(0, Iterator::count);
        let creates = self
            .fake
            .as_ref()
            .map_or(0, |f| f.requests().iter().filter(|r| r.starts_with("POST ")).count());
        (folders + creates) as u64
    }

    fn poll_policy(&self) -> finetune_core::PollPolicy {
        finetune_core::PollPolicy::fixed(Duration::from_millis(20), Duration::from_secs(600))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_provider_passes_the_conformance_suite() {
    let fake = FakeKube::start(trainer(), 0).await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    let provider = cluster(&fake, &jobs, |_| {});
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama");
    let harness = ClusterHarness::new(provider, Some(fake.clone()), &jobs, model.to_str().unwrap());
    let report = finetune_core::testing::run_conformance(&harness).await.unwrap();
    assert_eq!(report.passed.len(), 4);
    // The cancelled job's Job and pod are gone; the finished one's remain
    // (until its TTL, which the cluster applies).
    assert_eq!(fake.objects().0, 1);
}

/// The same suite on a real cluster. Set `KUBECONFIG`; `FINETUNE_K8S_IMAGE`
/// to an image built from the Containerfile that the cluster can pull;
/// `FINETUNE_K8S_SHARED` to a folder this machine and the cluster's node
/// both see at that path (a one-node cluster's hostPath: kind with
/// `extraMounts`, minikube with `minikube mount`); optionally
/// `FINETUNE_K8S_NAMESPACE`. Then
/// `cargo test -p finetune-local --features kubernetes --test kubernetes -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: KUBECONFIG, FINETUNE_K8S_IMAGE and FINETUNE_K8S_SHARED"]
async fn a_real_cluster_passes_the_conformance_suite() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (see the test's comment)"))
    };
    let _ = var("KUBECONFIG");
    let image = var("FINETUNE_K8S_IMAGE");
    let run = PathBuf::from(var("FINETUNE_K8S_SHARED"))
        .join(format!("finetune-test-{}", chrono::Utc::now().format("%Y%m%d%H%M%S")));
    // The tiny model in a model cache on the shared folder, under an id.
    let cache_dir = run.join("models");
    let id = finetune_local::ModelId::parse("finetune-test/tiny-llama").unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama");
    finetune_local::ModelCache::at(&cache_dir).preload(&fixture, &id).unwrap();
    let jobs = run.join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let local = LocalProvider::new(Runtime {
        output_root: jobs.clone(),
        cache: finetune_local::ModelCache::at(&cache_dir),
        threads: Some(1),
        ..Runtime::default()
    });
    let mut container =
        ContainerConfig::new(image, Volume::HostPath { path: jobs.display().to_string() });
    container.model_cache = Some(Volume::HostPath { path: cache_dir.display().to_string() });
    container.namespace = std::env::var("FINETUNE_K8S_NAMESPACE").ok();
    container.env = vec![EnvVar::value("FINETUNE_DEVICE", "cpu")];
    let client = kube::Client::try_default().await.unwrap();
    let provider = KubernetesProvider::new(local, client, container);
    let harness = ClusterHarness::new(provider, None, &jobs, &id.repo);
    let report = finetune_core::testing::run_conformance(&harness).await.unwrap();
    assert_eq!(report.passed.len(), 4);
}
