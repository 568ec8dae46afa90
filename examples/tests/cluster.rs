//! The recipe on a local connection whose container configuration names a
//! cluster: the job runs as a Kubernetes Job (the fake API of
//! finetune-local's tests, whose pods are the real trainer binary), and the
//! version is registered with its loss curve.
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used)]

#[path = "../../finetune-local/tests/fake_kube/mod.rs"]
mod fake_kube;
mod support;

use std::time::Duration;

use finetune_core::container::{EnvVar, Volume};
use finetune_core::{
    Connection, ConnectionSettings, ContainerConfig, Hyperparameters, JobSpec, LearningRate,
    LocalHfSettings, PollPolicy, Setting,
};
use finetune_deploy::{Lifecycle, Recipe, Registry, WaitPolicy};
use support::{dataset, local_model, providers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recipe_trains_through_the_kubernetes_api_and_registers_the_version() {
    let fake = fake_kube::FakeKube::start(support::example_binary("finetune_local"), 0).await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: training\n",
            fake.url()
        ),
    )
    .unwrap();
    let mut container = ContainerConfig::new(
        "registry.example.com/finetune-trainer:test",
        Volume::HostPath { path: jobs.display().to_string() },
    );
    container.kubeconfig = Some(kubeconfig);
    container.env =
        vec![EnvVar::value("FINETUNE_DEVICE", "cpu"), EnvVar::value("FINETUNE_THREADS", "1")];
    let settings = LocalHfSettings::new(&jobs).with_threads(1).with_container(container);
    let connection = Connection::new("cluster", ConnectionSettings::LocalHf(settings))
        .with_fine_tuning_enabled(true);

    let model = local_model().canonicalize().unwrap();
    let spec = JobSpec::new(model.to_str().unwrap(), dataset(dir.path(), "train.jsonl", 12, 0))
        .with_validation(dataset(dir.path(), "valid.jsonl", 4, 100))
        .with_hyperparameters(Hyperparameters {
            epochs: Setting::Value(2),
            batch_size: Setting::Value(4),
            learning_rate: Setting::Value(LearningRate::Absolute(1e-3)),
        })
        .with_extra("lora_r", 4);
    let registry = Registry::local(dir.path().join("registry")).unwrap();
    let lifecycle =
        Lifecycle::for_connection(registry.clone(), &connection).await.unwrap().with_wait(
            WaitPolicy { interval: Duration::from_millis(5), timeout: Duration::from_secs(60) },
        );
    let outcome = Recipe::new("bot-cluster", spec)
        .with_poll(PollPolicy::fixed(Duration::from_millis(20), Duration::from_secs(300)))
        .run(&providers(), &connection, &lifecycle, |_| {})
        .await
        .unwrap();
    assert_eq!(outcome.version.version, 1);
    let summary = finetune_deploy::VersionSummary::of(&lifecycle, "bot-cluster", 1).await.unwrap();
    assert!(summary.curve.points().iter().any(|p| p.train_loss.is_some()), "a training curve");
    assert!(
        summary.curve.points().iter().any(|p| p.validation_loss.is_some()),
        "a validation curve"
    );
    // It went through the API: one Job created in the context's namespace.
    let created: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST /apis/batch/v1/namespaces/training/jobs"))
        .collect();
    assert_eq!(created.len(), 1, "{:?}", fake.requests());
}
