//! The recipe, the same for every kind: v1 is registered with its
//! provenance and made active (deployed where the platform needs it); v2
//! replaces it (its deployment made, v1's deleted) and answers through
//! `ChatModel`; each version's summary and loss graph come from the
//! registry alone. A recipe killed after submit (a real child process)
//! re-attaches when rerun: one job, one version.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use finetune_core::{
    ChatRequest, Connection, FineTuneProvider, Hyperparameters, JobSpec, LearningRate, ListJobs,
    PollPolicy, Setting,
};
use finetune_data::ProblemKind;
use finetune_deploy::{
    Lifecycle, PriceTable, Recipe, RecipeEvent, Registry, VersionSummary, WaitPolicy,
};
use support::{Kind, Peers, dataset, providers};

fn recipe(kind: &Kind, dir: &Path, seed: u64) -> Recipe {
    let model = format!("bot-{}", kind.connection.name);
    let mut spec = JobSpec::new(&kind.base_model, dataset(dir, "train.jsonl", 12, 0))
        .with_validation(dataset(dir, "valid.jsonl", 4, 100))
        .with_seed(seed);
    if kind.connection.provider() == finetune_core::ProviderKind::LocalHf {
        spec = spec
            .with_hyperparameters(Hyperparameters {
                epochs: Setting::Value(2),
                batch_size: Setting::Value(4),
                learning_rate: Setting::Value(LearningRate::Absolute(1e-3)),
            })
            .with_extra("lora_r", 4);
    }
    Recipe::new(model, spec)
        .with_poll(PollPolicy::fixed(Duration::from_millis(10), Duration::from_secs(300)))
}

async fn lifecycle_for(registry: &Registry, connection: &Connection) -> Lifecycle {
    Lifecycle::for_connection(registry.clone(), connection)
        .await
        .unwrap()
        .with_wait(WaitPolicy {
            interval: Duration::from_millis(5),
            timeout: Duration::from_secs(60),
        })
        .with_prices(PriceTable::default().with("Standard", 1.7).with("on-demand", 0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recipe_makes_versions_and_deploys_them_where_needed() {
    let dir = tempfile::tempdir().unwrap();
    let peers = Peers::start("recipe").await;
    let providers = providers();
    let registry = Registry::local(dir.path().join("registry")).unwrap();
    for kind in peers.kinds("recipe", dir.path()) {
        let name = kind.connection.name.clone();
        let lifecycle = lifecycle_for(&registry, &kind.connection).await;
        let mut events = Vec::new();
        let v1 = recipe(&kind, dir.path(), 1)
            .run(&providers, &kind.connection, &lifecycle, |e| events.push(e))
            .await
            .unwrap();
        assert_eq!(v1.version.version, 1, "{name}");
        assert!(!v1.reattached);
        let validated =
            events.iter().filter(|e| matches!(e, RecipeEvent::Validated { .. })).count();
        assert_eq!(validated, 2, "{name}: {events:?}");
        assert!(events.iter().any(|e| matches!(e, RecipeEvent::State(s) if s.name() == "running")));
        // Bedrock reports no step while a job runs (its metrics arrive with
        // the outputs); the others report steps and losses as they train.
        let steps = events.iter().any(|e| matches!(e, RecipeEvent::Progress { .. }));
        assert_eq!(
            steps,
            kind.connection.provider() != finetune_core::ProviderKind::Bedrock,
            "{name}"
        );
        let provenance = v1.version.provenance.clone().unwrap();
        assert_eq!(
            (provenance.connection.as_str(), provenance.base_model.as_str()),
            (name.as_str(), kind.base_model.as_str())
        );
        assert_eq!(provenance.datasets.iter().map(|d| d.rows).collect::<Vec<_>>(), [12, 4]);
        // What the job ran with, as the provider reported it.
        assert!(
            provenance.resolved_hyperparameters.as_ref().is_some_and(|h| h.is_object()),
            "{name}: {provenance:?}"
        );
        assert_eq!(v1.version.connection.as_deref(), Some(name.as_str()));
        assert_eq!(v1.version.dataset_fingerprints.len(), 2);
        assert_eq!(v1.head.active_version, Some(1));
        let needs = v1.version.model.requires_deployment;
        assert_eq!(needs, v1.head.active_deployment.is_some(), "{name}: {:?}", v1.head);
        let v1_deployment = v1.head.active_deployment.clone();

        let v2 = recipe(&kind, dir.path(), 2)
            .run(&providers, &kind.connection, &lifecycle, |_| {})
            .await
            .unwrap();
        assert_eq!((v2.version.version, v2.head.active_version), (2, Some(2)), "{name}");
        assert!(v2.head.pending_jobs.is_empty());
        if needs {
            let active = v2.head.active_deployment.clone().unwrap();
            assert_ne!(Some(&active), v1_deployment.as_ref(), "{name}");
            // v1's deployment is gone from the platform and the model.
            let old = v1_deployment.unwrap();
            assert!(lifecycle.deployer().get(&old).await.unwrap().is_none(), "{name}: {old}");
            assert_eq!(v2.head.deployments.len(), 1, "{name}: {:?}", v2.head);
        } else {
            assert!(v2.head.deployments.is_empty(), "{name}: {:?}", v2.head);
        }
        // v2 answers through its deployment (or directly).
        let chat = providers
            .chat_model(&kind.connection, &v2.version.model, v2.head.active_deployment.as_deref())
            .await
            .unwrap();
        let answer = chat.chat(&ChatRequest::user("What is 7 plus one?").with_max_tokens(8)).await;
        assert!(!answer.unwrap().text.is_empty(), "{name}");

        // The summary, from the registry alone (a new lifecycle).
        let summary =
            VersionSummary::of(&lifecycle_for(&registry, &kind.connection).await, &v2.head.name, 2)
                .await
                .unwrap();
        let text = summary.to_string();
        assert!(text.contains("(active)") && text.contains(&name), "{text}");
        assert!(summary.curve.has_validation(), "{name}: {text}");
        assert!(text.contains("valid loss"), "{text}");
        if needs {
            assert_eq!(summary.deployments.len(), 1, "{text}");
            assert!(summary.hourly_cost().is_some(), "{text}");
        } else {
            assert!(text.contains("none needed"), "{text}");
        }
        let (svg, png) = summary.save_loss_graph(&dir.path().join("graphs")).unwrap().unwrap();
        assert!(std::fs::read_to_string(svg).unwrap().contains("<svg"));
        assert!(std::fs::metadata(png).unwrap().len() > 1000);
    }
    peers.assert_openai_spec_held();

    // One registry, models of four platforms: reconciling with each
    // platform's lifecycle (deleting orphans) changes nothing of the others'.
    let mut heads = Vec::new();
    for model in registry.models().await.unwrap() {
        heads.push(registry.head(&model).await.unwrap());
    }
    assert_eq!(heads.len(), 4);
    for kind in peers.kinds("recipe", dir.path()) {
        let report =
            lifecycle_for(&registry, &kind.connection).await.reconcile(true).await.unwrap();
        assert!(report.errors.is_empty() && report.orphans.is_empty(), "{report:?}");
        assert!(report.recovered.is_empty(), "{}: {report:?}", kind.connection.name);
    }
    for before in heads {
        let after = registry.head(&before.name).await.unwrap();
        assert_eq!(
            (after.active_deployment, after.deployments.len()),
            (before.active_deployment, before.deployments.len()),
            "{}",
            before.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_connection_or_bad_data_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let peers = Peers::start("refusals").await;
    let providers = providers();
    let registry = Registry::local(dir.path().join("registry")).unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"prompt\":\"c\"}\n").unwrap();
    let rows = |special: &str| -> String {
        (1..=12)
            .map(|i| {
                let completion = if i == 4 { special.to_owned() } else { format!("Answer {i}.") };
                serde_json::json!({"prompt": format!("Question {i}?"), "completion": completion})
                    .to_string()
                    + "\n"
            })
            .collect()
    };
    let long = dir.path().join("long.jsonl");
    std::fs::write(&long, rows(&" hello".repeat(70_000))).unwrap();
    let reserved = dir.path().join("reserved.jsonl");
    std::fs::write(&reserved, rows("Bot: it ships tomorrow.")).unwrap();
    for kind in peers.kinds("refusals", dir.path()) {
        let lifecycle = lifecycle_for(&registry, &kind.connection).await;
        let before = peers.requests();
        let off = kind.connection.clone().with_fine_tuning_enabled(false);
        let err = recipe(&kind, dir.path(), 1).run(&providers, &off, &lifecycle, |_| {}).await;
        assert!(matches!(err, Err(finetune_core::Error::FineTuningDisabled { .. })), "{err:?}");
        let mut reports = Vec::new();
        let mut bad_recipe = recipe(&kind, dir.path(), 1);
        bad_recipe.spec.training =
            finetune_core::DatasetSource::new(bad.to_str().unwrap()).unwrap();
        let err = bad_recipe
            .run(&providers, &kind.connection, &lifecycle, |e| {
                if let RecipeEvent::Validated { report, .. } = e {
                    reports.push(report);
                }
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.jsonl") && err.contains("completion"), "{err}");
        assert!(reports.iter().any(|r| !r.valid), "{reports:?}");
        assert_eq!(before, peers.requests(), "{}: requests were sent", kind.connection.name);

        // Data only the provider's own rules refuse: an example longer than
        // gpt-4o-mini's 65,536 training tokens (by o200k_base), Nova's
        // reserved `Bot:` in a completion.
        let Some((base_model, file, kind_name)) = (match &kind.connection.settings {
            finetune_core::ConnectionSettings::OpenAi(_)
            | finetune_core::ConnectionSettings::AzureOpenAi(_) => {
                Some((kind.base_model.clone(), &long, ProblemKind::TooLong))
            }
            finetune_core::ConnectionSettings::Bedrock(_) => Some((
                "amazon.nova-micro-v1:0:128k".to_owned(),
                &reserved,
                ProblemKind::ReservedText,
            )),
            _ => None,
        }) else {
            continue;
        };
        let mut ruled = recipe(&kind, dir.path(), 1);
        ruled.spec.base_model = base_model;
        ruled.spec.training = finetune_core::DatasetSource::new(file.to_str().unwrap()).unwrap();
        let mut reports = Vec::new();
        let err = ruled
            .run(&providers, &kind.connection, &lifecycle, |e| {
                if let RecipeEvent::Validated { report, .. } = e {
                    reports.push(report);
                }
            })
            .await
            .unwrap_err();
        let problem = reports.iter().find_map(|r| r.problems(kind_name).next().cloned());
        let problem =
            problem.unwrap_or_else(|| panic!("{}: no {kind_name}: {err}", kind.connection.name));
        assert_eq!((problem.row, problem.column.as_deref()), (Some(4), Some("completion")));
        assert_eq!(before, peers.requests(), "{}: requests were sent", kind.connection.name);
    }
}

const CHILD: &str = "FINETUNE_TEST_RECIPE_CHILD";

fn local_kind(dir: &Path) -> Kind {
    let settings = finetune_core::LocalHfSettings::new(dir.join("jobs")).with_threads(1);
    Kind {
        connection: Connection::new("box", finetune_core::ConnectionSettings::LocalHf(settings))
            .with_fine_tuning_enabled(true),
        base_model: support::local_model().to_str().unwrap().to_owned(),
    }
}

fn long_recipe(dir: &Path) -> Recipe {
    let mut recipe = recipe(&local_kind(dir), dir, 3);
    recipe.spec.hyperparameters = Hyperparameters {
        epochs: Setting::Value(40),
        batch_size: Setting::Value(2),
        learning_rate: Setting::Value(LearningRate::Absolute(1e-3)),
    };
    recipe
}

#[test]
fn a_recipe_killed_after_submit_reattaches_when_rerun() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let rt = rt.unwrap();
    if let Some(dir) = std::env::var_os(CHILD) {
        let dir = Path::new(&dir);
        rt.block_on(async {
            let kind = local_kind(dir);
            let registry = Registry::local(dir.join("registry")).unwrap();
            let lifecycle = lifecycle_for(&registry, &kind.connection).await;
            long_recipe(dir).run(&providers(), &kind.connection, &lifecycle, |_| {}).await.unwrap();
        });
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_recipe_killed_after_submit_reattaches_when_rerun", "--nocapture"])
        .env(CHILD, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let registry = Registry::local(dir.path().join("registry")).unwrap();
    let model = long_recipe(dir.path()).model;
    let started = Instant::now();
    // Kill it once the job id is recorded and training is under way.
    loop {
        let head = rt.block_on(registry.head(&model));
        if let Ok(head) = head
            && head.pending_jobs.iter().any(|p| p.job_id.is_some())
        {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the child ended before it was killed");
        assert!(started.elapsed() < Duration::from_secs(300), "the child never submitted");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());

    let kind = local_kind(dir.path());
    rt.block_on(async {
        let lifecycle = lifecycle_for(&registry, &kind.connection).await;
        let outcome = long_recipe(dir.path())
            .run(&providers(), &kind.connection, &lifecycle, |_| {})
            .await
            .unwrap();
        assert!(outcome.reattached);
        assert_eq!(outcome.version.version, 1);
        assert_eq!(registry.versions(&model).await.unwrap().len(), 1);
        let provider = providers().connect(&kind.connection).await.unwrap();
        let jobs = provider.list_jobs(&ListJobs::default()).await.unwrap();
        assert_eq!(jobs.items.len(), 1, "the provider saw one job: {:?}", jobs.items);
    });
}
