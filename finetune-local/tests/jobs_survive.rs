//! Local jobs outlive their process: a job whose process is killed with
//! SIGKILL mid-training is listed by a new provider, resumed from its newest
//! checkpoint and ends with the adapter an uninterrupted run makes. Also:
//! the validator refuses bad data at submit, jobs on one device take turns,
//! and the local factory passes the factory checks (its model answering
//! through `ChatModel`).
//!
//! The killed process is this test binary run again (`--exact` on the test,
//! with `FINETUNE_TEST_CHILD_ROOT` set), so it is a real, separate process.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use finetune_core::testing::{FactoryHarness, run_factory_conformance};
use finetune_core::{
    ChatRequest, Connection, ConnectionSettings, DatasetSource, Error, FineTuneProvider,
    FineTunedModel, Hyperparameters, JobSpec, JobState, LearningRate, ListJobs, LocalHfSettings,
    ModelArtifacts, PollPolicy, ProviderFactory, Setting, wait_for_job,
};
use finetune_local::{LocalFactory, LocalProvider, ModelCache, Runtime};

const CHILD_ROOT: &str = "FINETUNE_TEST_CHILD_ROOT";

/// libtorch's random generator is one per process: a LoRA initialised
/// while another test trains draws other numbers, so the tests that train
/// in this process, and compare weights, take turns.
static TRAINING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama")
}

fn write_data(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for n in 0..16 {
        text.push_str(&format!(
            "{{\"prompt\":\"What is {n} plus one?\",\"completion\":\"{}\"}}\n",
            n + 1
        ));
    }
    let path = dir.join("train.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn runtime(root: &Path) -> Runtime {
    Runtime {
        device: Some(finetune_local::tch::Device::Cpu),
        threads: Some(1),
        output_root: root.join("jobs"),
        cache: ModelCache::at(root.join("cache")),
        ..Runtime::default()
    }
}

/// 16 rows, batch 2, 6 epochs: 48 steps.
fn spec(data: &Path) -> JobSpec {
    JobSpec::new(model_dir().to_str().unwrap(), DatasetSource::new(data.to_str().unwrap()).unwrap())
        .with_seed(11)
        .with_hyperparameters(Hyperparameters {
            epochs: Setting::Value(6),
            batch_size: Setting::Value(2),
            learning_rate: Setting::Value(LearningRate::Absolute(2e-3)),
        })
        .with_extra("lora_r", 4)
        .with_extra("max_length", 64)
}

/// [`spec`] with a checkpoint every 4 steps.
fn checkpointed(data: &Path) -> JobSpec {
    spec(data).with_extra("checkpoint_every", 4)
}

fn poll() -> PollPolicy {
    PollPolicy::fixed(Duration::from_millis(5), Duration::from_secs(600))
}

fn adapter_of(model: &FineTunedModel) -> Vec<(String, finetune_local::tch::Tensor)> {
    let ModelArtifacts::LocalDir { path } = &model.artifacts else { panic!("{model:?}") };
    let mut tensors =
        finetune_local::tch::Tensor::read_safetensors(path.join("adapter_model.safetensors"))
            .unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// The newest checkpoint step in a job folder.
fn newest_checkpoint(job_dir: &Path) -> Option<u64> {
    std::fs::read_dir(job_dir.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
        .max()
}

/// In the child: submit and follow the job until killed.
fn child(root: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let provider = LocalProvider::new(runtime(root));
        let job = provider.submit(&checkpointed(&root.join("train.jsonl"))).await.unwrap();
        println!("child submitted {}", job.id);
        wait_for_job(&provider, &job.id, &poll(), |_| {}).await.unwrap();
        // Reaching here means the parent was too slow to kill mid-training:
        // the parent's assertions say so.
    });
}

#[test]
fn a_job_killed_mid_training_is_listed_and_resumed_by_a_new_process() {
    if let Ok(root) = std::env::var(CHILD_ROOT) {
        child(Path::new(&root));
        return;
    }
    let _turn = TRAINING.blocking_lock();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let rt = rt.unwrap();

    // The reference: the same job, never interrupted.
    let reference = tempfile::tempdir().unwrap();
    let data = write_data(reference.path());
    let expected = rt.block_on(async {
        let provider = LocalProvider::new(runtime(reference.path()));
        let job = provider.submit(&checkpointed(&data)).await.unwrap();
        let done = wait_for_job(&provider, &job.id, &poll(), |_| {}).await.unwrap();
        let JobState::Succeeded { model } = done.state else { panic!("{}", done.state) };
        model
    });

    // The same job in a child process, killed once it has checkpointed.
    let killed = tempfile::tempdir().unwrap();
    write_data(killed.path());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_job_killed_mid_training_is_listed_and_resumed_by_a_new_process"])
        .args(["--nocapture", "--test-threads", "1"])
        .env(CHILD_ROOT, killed.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let jobs = killed.path().join("jobs");
    let started = Instant::now();
    let job_dir = loop {
        let dir = std::fs::read_dir(&jobs)
            .ok()
            .and_then(|mut d| d.find_map(|e| e.ok().map(|e| e.path()).filter(|p| p.is_dir())));
        if let Some(dir) = dir
            && newest_checkpoint(&dir).is_some_and(|s| s >= 8)
        {
            break dir;
        }
        assert!(child.try_wait().unwrap().is_none(), "the child ended before it was killed");
        assert!(started.elapsed() < Duration::from_secs(300), "the child never checkpointed");
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "{status:?}");
    let killed_at = newest_checkpoint(&job_dir).unwrap();
    assert!(killed_at < 48, "the child finished before the kill (checkpoint {killed_at})");

    // A new provider over the same folder lists it as interrupted, then
    // resumes it when asked for it.
    let (model, listed) = rt.block_on(async {
        let provider = LocalProvider::new(runtime(killed.path()));
        let page = provider.list_jobs(&ListJobs::default()).await.unwrap();
        assert_eq!(page.items.len(), 1);
        let listed = page.items[0].clone();
        let done = wait_for_job(&provider, &listed.id, &poll(), |_| {}).await.unwrap();
        let JobState::Succeeded { model } = done.state else { panic!("{}", done.state) };
        // A third provider reads the finished job and its whole curve from
        // the folder alone.
        let again = LocalProvider::new(runtime(killed.path()));
        let read = again.job(&listed.id).await.unwrap();
        assert_eq!(read.state.model().map(|m| &m.model_id), Some(&model.model_id));
        let curve = again.metrics(&listed.id).await.unwrap();
        assert_eq!(
            curve.train_series().iter().map(|p| p.0).collect::<Vec<_>>(),
            (1..=48).collect::<Vec<_>>()
        );
        (model, listed)
    });
    assert_eq!(listed.state, JobState::Paused, "an interrupted job lists as paused");
    assert_eq!(model.metadata.get("resumed").map(String::as_str), Some("1"));
    let (want, got) = (adapter_of(&expected), adapter_of(&model));
    assert_eq!(want.len(), got.len());
    for ((name, a), (other, b)) in want.iter().zip(&got) {
        assert_eq!(name, other);
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(diff <= 1e-6, "{name} differs by {diff} after a resume from step {killed_at}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_refused_at_submit_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"prompt\":\"c\",\"completion\":null}\n",
    )
    .unwrap();
    let provider = LocalProvider::new(runtime(dir.path()));
    let err = provider.submit(&spec(&path)).await.unwrap_err();
    let Error::InvalidInput { location: Some(at), .. } = &err else { panic!("{err}") };
    assert!(at.file.as_deref().is_some_and(|f| f.ends_with("broken.jsonl")), "{err}");
    assert_eq!((at.row, at.column.as_deref()), (Some(2), Some("completion")), "{err}");
    assert!(provider.list_jobs(&ListJobs::default()).await.unwrap().items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_on_one_device_take_turns() {
    let _turn = TRAINING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    // Two providers, as two connections to the same machine would make.
    let a = LocalProvider::new(runtime(dir.path()));
    let b = LocalProvider::new(runtime(dir.path()));
    let spec = spec(&data).with_extra("max_steps", 16);
    let first = a.submit(&spec).await.unwrap();
    let second = b.submit(&spec).await.unwrap();
    let busy = |s: &JobState| matches!(s, JobState::Validating | JobState::Running { .. });
    let mut waited = false;
    loop {
        let (x, y) =
            (a.job(&first.id).await.unwrap().state, b.job(&second.id).await.unwrap().state);
        assert!(!(busy(&x) && busy(&y)), "both train at once: {x} / {y}");
        waited |= (busy(&x) && y == JobState::Queued) || (busy(&y) && x == JobState::Queued);
        if x.is_terminal() && y.is_terminal() {
            assert!(
                matches!(x, JobState::Succeeded { .. }) && matches!(y, JobState::Succeeded { .. })
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(waited, "one job never waited for the other");
}

struct LocalHarness {
    dir: tempfile::TempDir,
    data: PathBuf,
}

#[async_trait]
impl FactoryHarness for LocalHarness {
    fn factory(&self) -> Arc<dyn ProviderFactory> {
        Arc::new(LocalFactory::default())
    }

    fn connection(&self) -> Connection {
        let settings = LocalHfSettings::new(self.dir.path().join("jobs"))
            .with_cache_dir(self.dir.path().join("cache"))
            .with_device("auto")
            .with_threads(2);
        Connection::new("workstation", ConnectionSettings::LocalHf(settings))
            .with_fine_tuning_enabled(true)
    }

    fn valid_spec(&self) -> JobSpec {
        spec(&self.data).with_extra("max_steps", 4)
    }

    /// Local work starts by making a job folder: count those.
    async fn requests(&self) -> u64 {
        std::fs::read_dir(self.dir.path().join("jobs")).map_or(0, |d| d.count()) as u64
    }

    fn chat_request(&self) -> ChatRequest {
        ChatRequest::user("What is 3 plus one?").with_system("Answer briefly.").with_max_tokens(8)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_factory_passes_the_factory_checks() {
    let _turn = TRAINING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path());
    let harness = LocalHarness { dir, data };
    let report = run_factory_conformance(&harness).await.unwrap();
    assert_eq!(report.passed.len(), 3);
    // The connection's runtime is what the provider runs with.
    let connection = harness.connection();
    let runtime = Runtime::from_connection(&connection).unwrap();
    assert_eq!((runtime.device, runtime.threads), (None, Some(2)));
    assert_eq!(runtime.output_root, harness.dir.path().join("jobs"));
    let mut bad = LocalHfSettings::default();
    bad.device = Some("tpu".into());
    let err = Runtime::from_settings(&bad).unwrap_err().to_string();
    assert!(err.contains("settings.device"), "{err}");
}

/// Bring your own training code: a model folder and an adapter folder that
/// other code wrote are loaded (the check) and described as fine-tuned
/// models, their `metrics.jsonl` (transformers' log-history keys) read as
/// the loss curve; a folder that does not load is refused, naming the file.
#[test]
fn folders_written_by_custom_code_are_imported_after_loading() {
    let _turn = TRAINING.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime(dir.path());
    // A whole model, with Trainer-style metrics.
    let custom = dir.path().join("custom");
    std::fs::create_dir_all(&custom).unwrap();
    for entry in std::fs::read_dir(model_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), custom.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        custom.join("metrics.jsonl"),
        "{\"loss\": 2.5, \"learning_rate\": 0.001, \"epoch\": 0.5, \"step\": 1}\n\
         {\"loss\": 1.9, \"learning_rate\": 0.001, \"epoch\": 1.0, \"step\": 2}\n\
         {\"eval_loss\": 2.1, \"epoch\": 1.0, \"step\": 2}\n\
         {\"train_runtime\": 3.2, \"step\": 2}\n",
    )
    .unwrap();
    let model = finetune_local::import_trained(&custom, "my-run", None, &runtime).unwrap();
    assert_eq!(model.model_id, "my-run");
    assert_eq!(model.loss_curve.train_series(), vec![(1, 2.5), (2, 1.9)]);
    assert_eq!(model.loss_curve.validation_series(), vec![(2, 2.1)]);
    assert!(!model.requires_deployment);

    // A LoRA adapter over the fixture, as PEFT lays it out.
    let adapter = dir.path().join("adapter");
    let mut base = finetune_local::CausalLm::load(&model_dir(), &Default::default()).unwrap();
    base.add_lora(&finetune_local::lora::LoraConfig::default()).unwrap();
    base.save_adapter(&adapter, model_dir().to_str().unwrap()).unwrap();
    let model = finetune_local::import_trained(&adapter, "my-adapter", None, &runtime).unwrap();
    assert_eq!(model.base_model, model_dir().to_str().unwrap());
    assert_eq!(model.metadata["weights"], "lora adapter");
    assert!(model.loss_curve.train_series().is_empty());

    // A folder that does not load.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("config.json"), "{\"model_type\": \"llama\"").unwrap();
    let err = finetune_local::import_trained(&broken, "broken", None, &runtime).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    // And metrics that are not step records are refused with their line.
    std::fs::write(custom.join("metrics.jsonl"), "{\"loss\": 1.0}\n").unwrap();
    let err = finetune_local::import_trained(&custom, "x", None, &runtime).unwrap_err();
    assert!(
        err.to_string().contains("metrics.jsonl") && err.to_string().contains("line 1"),
        "{err}"
    );
}

#[tokio::test]
async fn a_container_connection_never_trains_in_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut container = finetune_core::ContainerConfig::new(
        "registry.example.com/finetune-trainer:0.1",
        finetune_core::container::Volume::Pvc { claim: "jobs".into(), sub_path: None },
    );
    container.kubeconfig = Some(dir.path().join("no-such-kubeconfig"));
    let settings = LocalHfSettings::new(dir.path().join("jobs")).with_container(container);
    let connection = Connection::new("cluster", ConnectionSettings::LocalHf(settings))
        .with_fine_tuning_enabled(true);
    let err = LocalFactory::default().connect(connection.enabled().unwrap()).await.unwrap_err();
    if cfg!(feature = "kubernetes") {
        // The cluster provider: its kubeconfig cannot be read.
        assert!(err.to_string().contains("no-such-kubeconfig"), "{err}");
    } else {
        assert!(matches!(err, finetune_core::Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("kubernetes"), "{err}");
    }
    // Nothing was started.
    assert!(!dir.path().join("jobs").exists());
}
