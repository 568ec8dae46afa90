//! The Bedrock deployer against the stateful fake of Bedrock (custom models
//! trained there, data and metrics on moto's S3): on-demand deployments and
//! provisioned throughput with slow provisioning, a failed deployment,
//! throttling that never doubles a deployment, a replayed create, and the
//! lifecycle through it, including a pre-existing deployment attached by
//! hand and an orphan found by reconcile.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use finetune_core::FineTunedModel;
use finetune_core::{DatasetSource, FineTuneProvider, JobSpec, JobState, PollPolicy, wait_for_job};
use finetune_deploy::testing::{DeployerHarness, run_deployer_conformance};
use finetune_deploy::{
    BedrockDeployer, Deployer, DeploymentSpec, DeploymentState, Lifecycle, LifecyclePolicy,
    MANAGED_TAG, NewVersion, Registry, WaitPolicy,
};
use finetune_providers::testing::{FakeBedrock, Fault, Method, Moto};
use finetune_providers::{BedrockConfig, BedrockProvider, ChatRequest};

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

struct World {
    fake: FakeBedrock,
    provider: Arc<BedrockProvider>,
    deployer: Arc<BedrockDeployer>,
    _dir: tempfile::TempDir,
}

async fn world(bucket: &str) -> World {
    let moto = moto();
    moto.create_bucket(bucket).await;
    let fake = FakeBedrock::start(moto.store(bucket), bucket).await;
    let config =
        BedrockConfig::new("arn:aws:iam::123456789012:role/ft", &format!("s3://{bucket}/ft"))
            .unwrap()
            .with_sdk_config(Moto::sdk_config())
            .with_endpoint_url(fake.url())
            .with_s3_endpoint_url(moto.endpoint())
            .with_retries(8, Duration::from_millis(5));
    let provider = Arc::new(BedrockProvider::new(config).await.unwrap());
    let deployer = Arc::new(BedrockDeployer::new(provider.control_client().clone()));
    World { fake, provider, deployer, _dir: tempfile::tempdir().unwrap() }
}

impl World {
    /// A custom model trained in the fake.
    async fn trained(&self, name: &str) -> FineTunedModel {
        let path = self._dir.path().join(format!("{name}.jsonl"));
        let rows: String = (0..6)
            .map(|i| format!("{{\"prompt\":\"{name} {i}\",\"completion\":\"{i}\"}}\n"))
            .collect();
        std::fs::write(&path, rows).unwrap();
        let spec = JobSpec::new(
            "amazon.titan-text-lite-v1:0:4k",
            DatasetSource::new(path.to_str().unwrap()).unwrap(),
        );
        let job = self.provider.submit(&spec).await.unwrap();
        let poll = PollPolicy::fixed(Duration::from_millis(2), Duration::from_secs(30));
        match wait_for_job(&self.provider, &job.id, &poll, |_| {}).await.unwrap().state {
            JobState::Succeeded { model } => *model,
            other => panic!("{other:?}"),
        }
    }
}

fn spec(name: &str, model: &str, sku: &str, capacity: u32) -> DeploymentSpec {
    let mut tags = BTreeMap::new();
    tags.insert(MANAGED_TAG.to_owned(), "true".to_owned());
    DeploymentSpec { name: name.into(), model_id: model.into(), sku: sku.into(), capacity, tags }
}

async fn until_settled(d: &BedrockDeployer, id: &str) -> DeploymentState {
    for _ in 0..50 {
        let state = d.get(id).await.unwrap().unwrap().state;
        if state != DeploymentState::Creating {
            return state;
        }
    }
    panic!("{id} never settled");
}

#[tokio::test]
async fn both_kinds_provision_fail_and_delete() {
    let w = world("deploy-kinds").await;
    let model = w.trained("kinds").await;
    let d = &w.deployer;

    let on_demand = d.create(&spec("kinds-od", &model.model_id, "on-demand", 0)).await.unwrap();
    assert!(on_demand.id.contains(":custom-model-deployment/"), "{}", on_demand.id);
    assert_eq!(on_demand.state, DeploymentState::Creating, "provisioning is slow");
    assert_eq!(until_settled(d, &on_demand.id).await, DeploymentState::Ready);

    let pt = d.create(&spec("kinds-pt", &model.model_id, "provisioned-1-month", 2)).await.unwrap();
    assert!(pt.id.contains(":provisioned-model/"), "{}", pt.id);
    assert_eq!(until_settled(d, &pt.id).await, DeploymentState::Ready);
    let pt = d.get(&pt.id).await.unwrap().unwrap();
    assert_eq!((pt.sku.as_str(), pt.capacity), ("provisioned-1-month", 2));
    assert!(pt.is_managed());

    // Both answer through Converse once ready.
    let ask = ChatRequest::user("ab cd");
    let answer = w.provider.chat_model(&on_demand.id).chat(&ask).await.unwrap();
    assert_eq!(answer.text, "[kinds-od] dc ba");
    assert_eq!(w.provider.chat_model(&pt.id).chat(&ask).await.unwrap().text, "[kinds-pt] dc ba");

    let mut managed: Vec<String> =
        d.list_managed().await.unwrap().into_iter().map(|d| d.id).collect();
    managed.sort();
    let mut expected = vec![on_demand.id.clone(), pt.id.clone()];
    expected.sort();
    assert_eq!(managed, expected);

    // A deployment that fails while provisioning says why.
    w.fake.fail_next_deployments(1);
    let failed = d.create(&spec("kinds-fail", &model.model_id, "on-demand", 0)).await.unwrap();
    match until_settled(d, &failed.id).await {
        DeploymentState::Failed { reason } => assert!(reason.contains("capacity"), "{reason}"),
        other => panic!("{other:?}"),
    }

    for id in [&on_demand.id, &pt.id, &failed.id] {
        d.delete(id).await.unwrap();
        assert!(d.get(id).await.unwrap().is_none());
        d.delete(id).await.unwrap();
    }
    assert!(w.fake.deployments().is_empty());
    // A bad sku or zero model units are refused before any call.
    assert!(
        d.create(&spec("x", &model.model_id, "Standard", 1))
            .await
            .unwrap_err()
            .to_string()
            .contains("sku")
    );
    assert!(d.create(&spec("x", &model.model_id, "provisioned", 0)).await.is_err());
}

#[tokio::test]
async fn throttling_and_lost_answers_never_make_two_deployments() {
    let w = world("deploy-faults").await;
    let model = w.trained("faults").await;
    let d = &w.deployer;
    for _ in 0..4 {
        w.fake
            .inject(Fault::throttle(Method::POST, "/model-customization/custom-model-deployments"));
    }
    let first = d.create(&spec("faults-a", &model.model_id, "on-demand", 0)).await.unwrap();
    assert_eq!(w.fake.injected(), 4);
    assert_eq!(w.fake.deployments().len(), 1);

    // The deployment is made, the answer lost: the SDK retries with the
    // same token and gets the same deployment.
    w.fake.inject(Fault::internal(Method::POST, "/provisioned-model-throughput").committed());
    let pt = d.create(&spec("faults-b", &model.model_id, "provisioned", 1)).await.unwrap();
    assert_eq!(w.fake.deployments().len(), 2);

    // Replaying a create (a reconcile after a crash) finds it by name.
    let again = d.create(&spec("faults-a", &model.model_id, "on-demand", 0)).await.unwrap();
    assert_eq!(again.id, first.id);
    let again = d.create(&spec("faults-b", &model.model_id, "provisioned", 1)).await.unwrap();
    assert_eq!(again.id, pt.id);
    assert_eq!(w.fake.deployments().len(), 2);
    println!(
        "bedrock deployer: {} faults ridden out, {} deployments",
        w.fake.injected(),
        w.fake.deployments().len()
    );
}

#[tokio::test]
async fn the_lifecycle_through_bedrock() {
    let w = world("deploy-lifecycle").await;
    let v1 = w.trained("v1").await;
    let v2 = w.trained("v2").await;
    let registry = Registry::in_memory();
    let lc = Lifecycle::new(registry.clone(), w.deployer.clone())
        .with_wait(WaitPolicy { interval: Duration::from_millis(2), ..WaitPolicy::immediate() });
    let policy =
        LifecyclePolicy { sku: "on-demand".into(), capacity: 0, ..LifecyclePolicy::default() };
    lc.create_model("bot", policy).await.unwrap();
    lc.register_version("bot", NewVersion::of(v1.clone())).await.unwrap();
    let head = registry.head("bot").await.unwrap();
    let first = head.active_deployment.clone().expect("version 1 deployed automatically");
    assert!(first.contains(":custom-model-deployment/"), "{first}");

    lc.register_version("bot", NewVersion::of(v2.clone())).await.unwrap();
    let head = lc.activate("bot", 2).await.unwrap();
    let second = head.active_deployment.clone().unwrap();
    assert_ne!(first, second);
    let live = w.deployer.list_managed().await.unwrap();
    assert_eq!(live.iter().map(|d| d.id.clone()).collect::<Vec<_>>(), vec![second.clone()]);
    assert_eq!(live[0].model_id, v2.model_id);
    assert_eq!(live[0].state, DeploymentState::Ready);
    assert!(w.deployer.get(&first).await.unwrap().is_none(), "version 1's deployment deleted");

    // A deployment the user made outside the library, attached by hand to
    // version 1, is never deleted by reconcile.
    let theirs = w.fake.preexisting_deployment("their-own", &v1.model_id);
    lc.attach("bot", 1, &theirs).await.unwrap();
    let report = lc.reconcile(true).await.unwrap();
    assert!(w.deployer.get(&theirs).await.unwrap().is_some(), "{report:?}");

    // A managed deployment no version references is an orphan.
    let orphan = w.deployer.create(&spec("orphan", &v1.model_id, "on-demand", 0)).await.unwrap();
    let report = lc.reconcile(true).await.unwrap();
    assert!(format!("{report:?}").contains(&orphan.id), "{report:?}");
    assert!(w.deployer.get(&orphan.id).await.unwrap().is_none(), "the orphan was deleted");
    assert!(w.deployer.get(&second).await.unwrap().is_some(), "the active deployment stays");
}

struct BedrockHarness {
    world: World,
    model_arn: String,
}

#[async_trait::async_trait]
impl DeployerHarness for BedrockHarness {
    fn deployer(&self) -> &dyn Deployer {
        &*self.world.deployer
    }

    fn spec(&self, name: &str) -> DeploymentSpec {
        let mut s = spec(name, &self.model_arn, "on-demand", 0);
        s.tags.clear();
        s
    }

    async fn add_unmanaged(&self, name: &str) -> String {
        // Made through the same API, without our tags, as a user would.
        self.world.deployer.create(&self.spec(name)).await.unwrap().id
    }
}

#[tokio::test]
async fn the_bedrock_deployer_passes_the_deployer_conformance_suite() {
    let world = world("deploy-conformance").await;
    let model_arn = world.trained("conformance").await.model_id;
    let report = run_deployer_conformance(&BedrockHarness { world, model_arn }).await.unwrap();
    assert_eq!(report.passed.len(), 5, "{report:?}");
}
