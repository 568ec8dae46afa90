//! One path for every kind of connection: `Connection` → factory → submit →
//! wait → (deploy where the platform needs it) → `ChatModel` answer. Local
//! on the small fixture model; OpenAI through Prism (validating every
//! request, and the fake's answers, against the official spec) to the
//! stateful fake; Azure OpenAI against its fake and the ARM fake; Bedrock
//! against its fake with moto's S3. The only per-kind lines are the
//! connections (and the base model each platform offers), in `support`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use finetune_core::{
    ChatRequest, Connection, DatasetSource, Error, FinishReason, JobSpec, JobState, PollPolicy,
    Providers, wait_for_job,
};
use finetune_deploy::{DeploymentSpec, DeploymentState, MANAGED_TAG, deployer_for};
use support::{Peers, dataset, providers};

/// What every kind goes through, written once.
async fn fine_tune_and_ask(
    providers: &Providers,
    connection: &Connection,
    base_model: &str,
    data: &DatasetSource,
) -> (finetune_core::FineTunedModel, finetune_core::ChatResponse) {
    let provider = providers.connect(connection).await.unwrap();
    let job = provider.submit(&JobSpec::new(base_model, data.clone()).with_seed(5)).await.unwrap();
    let poll = PollPolicy::fixed(Duration::from_millis(10), Duration::from_secs(300));
    let done = wait_for_job(&*provider, &job.id, &poll, |_| {}).await.unwrap();
    let JobState::Succeeded { model } = done.state else {
        panic!("{}: the job ended {}", connection.name, done.state)
    };
    // Where the platform serves fine-tuned models only through deployments,
    // deploy (and wait until ready) first.
    let mut deployment = None;
    if model.requires_deployment {
        let err = providers.chat_model(connection, &model, None).await.unwrap_err();
        assert!(matches!(&err, Error::NotDeployed { model: m } if *m == model.model_id), "{err}");
        let deployer = deployer_for(connection).await.unwrap().unwrap();
        let spec = DeploymentSpec {
            name: format!("{}-v1", connection.name),
            model_id: model.model_id.clone(),
            sku: deployer.default_sku().to_owned(),
            capacity: 1,
            tags: [(MANAGED_TAG.to_owned(), "true".to_owned())].into(),
        };
        let created = deployer.create(&spec).await.unwrap();
        let started = Instant::now();
        while deployer.get(&created.id).await.unwrap().unwrap().state != DeploymentState::Ready {
            assert!(started.elapsed() < Duration::from_secs(60), "{} never got ready", created.id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        deployment = Some(created.id);
    } else {
        assert!(deployer_for(connection).await.unwrap().is_none());
    }
    let chat = providers.chat_model(connection, &model, deployment.as_deref()).await.unwrap();
    let request = ChatRequest::user("What is 3 plus one?")
        .with_system("Answer with a number.")
        .with_max_tokens(8);
    let answer = chat.chat(&request).await.unwrap();
    (*model, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_fine_tunes_and_answers_through_the_same_code() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), "train.jsonl", 12, 0);
    let peers = Peers::start("four-kinds").await;
    let providers = providers();
    for kind in peers.kinds("four-kinds", dir.path()) {
        let (model, answer) =
            fine_tune_and_ask(&providers, &kind.connection, &kind.base_model, &data).await;
        let name = &kind.connection.name;
        assert_eq!(model.provider, kind.connection.provider().to_string(), "{name}");
        assert!(!answer.text.trim().is_empty(), "{name}: {answer:?}");
        assert!(answer.usage.prompt_tokens > 0 && answer.usage.completion_tokens > 0, "{name}");
        assert!(answer.usage.completion_tokens <= 8, "{name}: {answer:?}");
        assert!(
            matches!(answer.finish_reason, FinishReason::Stop | FinishReason::Length),
            "{name}: {answer:?}"
        );
        // A disabled copy of the same connection is refused, naming it,
        // before any request.
        let before = peers.requests();
        let off = Connection { name: format!("{name}-off"), ..kind.connection.clone() }
            .with_fine_tuning_enabled(false);
        let err = providers.connect(&off).await.unwrap_err();
        assert!(
            matches!(&err, Error::FineTuningDisabled { connection } if *connection == off.name),
            "{err}"
        );
        assert_eq!(before, peers.requests(), "{name}: a disabled connection sent requests");
    }
    peers.assert_openai_spec_held();
    // The Azure deployment was made through ARM.
    assert!(peers.arm.requests().iter().any(|r| r.starts_with("PUT ") && r.contains("aoai-v1")));
}

/// The factory checks of the core conformance suite, for the factories of
/// the cloud providers (the local and memory ones run theirs in their
/// crates).
struct CloudHarness<'a> {
    peers: &'a Peers,
    kind: support::Kind,
    factory: std::sync::Arc<dyn finetune_core::ProviderFactory>,
    data: DatasetSource,
}

#[finetune_core::async_trait]
impl finetune_core::testing::FactoryHarness for CloudHarness<'_> {
    fn factory(&self) -> std::sync::Arc<dyn finetune_core::ProviderFactory> {
        std::sync::Arc::clone(&self.factory)
    }

    fn connection(&self) -> Connection {
        self.kind.connection.clone()
    }

    fn valid_spec(&self) -> JobSpec {
        JobSpec::new(&self.kind.base_model, self.data.clone())
    }

    async fn requests(&self) -> u64 {
        let (a, b, c) = self.peers.requests();
        (a + b + c) as u64
    }

    async fn deploy(
        &self,
        model: &finetune_core::FineTunedModel,
    ) -> finetune_core::Result<Option<String>> {
        let deployer = deployer_for(&self.kind.connection).await?.expect("a deploying platform");
        let spec = DeploymentSpec {
            name: format!("{}-conformance", self.kind.connection.name),
            model_id: model.model_id.clone(),
            sku: deployer.default_sku().to_owned(),
            capacity: 1,
            tags: [(MANAGED_TAG.to_owned(), "true".to_owned())].into(),
        };
        let created = deployer.create(&spec).await?;
        while deployer.get(&created.id).await?.map(|d| d.state) != Some(DeploymentState::Ready) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Some(created.id))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cloud_factory_passes_the_factory_checks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), "train.jsonl", 12, 0);
    let peers = Peers::start("factory-checks").await;
    let factories: [std::sync::Arc<dyn finetune_core::ProviderFactory>; 3] = [
        std::sync::Arc::new(finetune_providers::OpenAiFactory::default()),
        std::sync::Arc::new(finetune_providers::AzureOpenAiFactory::default()),
        std::sync::Arc::new(finetune_providers::BedrockFactory::default()),
    ];
    let kinds = peers.kinds("factory-checks", dir.path());
    for (kind, factory) in kinds.into_iter().zip(factories) {
        let name = kind.connection.name.clone();
        let harness = CloudHarness { peers: &peers, kind, factory, data: data.clone() };
        let report = finetune_core::testing::run_factory_conformance(&harness)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.passed.len(), 3, "{name}");
    }
}
