//! The deployment lifecycle against the stateful fake platform: the walk
//! through of the issue, slow provisioning, failures, throttling, crashes at
//! every step followed by `reconcile`, two concurrent activations, and a
//! property test over random sequences (with a planted leak it must catch).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use finetune_core::{Error, FineTunedModel, LossCurve, ModelArtifacts};
use finetune_deploy::testing::{
    CrashPoint, CrashingDeployer, DeployerHarness, FakeDeployer, FakeFault, LeakingDeployer,
    run_deployer_conformance,
};
use finetune_deploy::{
    Deployer, DeploymentState, Lifecycle, LifecyclePolicy, MODEL_TAG, NewVersion, Origin,
    PriceTable, Registry, RetryingDeployer, WaitPolicy,
};
use proptest::prelude::*;

fn model(id: &str) -> NewVersion {
    NewVersion::of(FineTunedModel {
        provider: "azure_openai".into(),
        model_id: id.into(),
        base_model: "gpt-4o-mini".into(),
        job_id: None,
        created_at: Utc::now(),
        requires_deployment: true,
        artifacts: ModelArtifacts::Remote { id: id.into() },
        loss_curve: LossCurve::new(),
        metadata: Default::default(),
    })
}

/// The fake has no client of its own to retry throttled calls: the retry
/// decorator does, as it would for a user's deployer.
fn lifecycle(registry: &Registry, deployer: Arc<dyn Deployer>) -> Lifecycle {
    let retrying = RetryingDeployer::new(deployer, 5, Duration::ZERO);
    Lifecycle::new(registry.clone(), Arc::new(retrying)).with_wait(WaitPolicy::immediate())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
}

#[tokio::test]
async fn versions_deploy_switch_and_replace() {
    let fake = FakeDeployer::new(3);
    let registry = Registry::in_memory();
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let lc = lifecycle(&registry, Arc::new(fake.clone()))
        .with_observer(move |e| seen.lock().unwrap().push(e.to_string()))
        .with_prices(PriceTable::default().with("Standard", 1.5));
    lc.create_model("bot", LifecyclePolicy::default()).await.unwrap();
    let v1 = lc.register_version("bot", model("m1")).await.unwrap();
    assert_eq!(v1.version, 1);
    let head = registry.head("bot").await.unwrap();
    assert_eq!(head.active_version, Some(1));
    assert_eq!(head.active_deployment.as_deref(), Some("ft-bot-v1"));
    let v2 = lc.register_version("bot", model("m2")).await.unwrap();
    assert_eq!(registry.head("bot").await.unwrap().active_version, Some(1));

    let plan = lc.plan_activate("bot", v2.version).await.unwrap();
    assert_eq!(plan.create.as_ref().unwrap().name, "ft-bot-v2");
    assert_eq!(plan.delete, vec!["ft-bot-v1".to_owned()]);
    assert_eq!((plan.hourly_cost_before, plan.hourly_cost_after), (Some(1.5), Some(1.5)));
    assert!(plan.to_string().contains("delete ft-bot-v1"), "{plan}");

    let head = lc.activate("bot", 2).await.unwrap();
    assert_eq!(head.active_deployment.as_deref(), Some("ft-bot-v2"));
    assert_eq!(head.deployments.len(), 1);
    let live: Vec<String> = fake.all().into_iter().map(|d| d.id).collect();
    assert_eq!(live, vec!["ft-bot-v2".to_owned()]);
    let events = events.lock().unwrap().clone();
    let order: Vec<&str> = [
        "version 2 as ft-bot-v2",
        "ft-bot-v2 is ready",
        "served by ft-bot-v2",
        "ft-bot-v1 deleted",
    ]
    .into_iter()
    .collect();
    let positions: Vec<usize> = order
        .iter()
        .map(|needle| events.iter().position(|e| e.contains(needle)).unwrap_or(usize::MAX))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{events:#?}");

    // A pre-existing deployment attached by hand replaces ours and is never
    // deleted by the lifecycle; detaching leaves it running.
    fake.add_unmanaged("team-deployment", "m2");
    let head = lc.attach("bot", 2, "team-deployment").await.unwrap();
    assert_eq!(head.active_deployment.as_deref(), Some("team-deployment"));
    assert_eq!(head.deployments.len(), 1);
    assert!(fake.all().iter().all(|d| d.id == "team-deployment"));
    let err = lc.attach("bot", 2, "nope").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    lc.detach("bot", "team-deployment").await.unwrap();
    assert_eq!(fake.all().len(), 1);
    let report = lc.reconcile(false).await.unwrap();
    // Auto-deploy brings the active version's deployment back.
    assert!(report.orphans.is_empty() && report.errors.is_empty(), "{report:?}");
    assert_eq!(registry.head("bot").await.unwrap().active_deployment.as_deref(), Some("ft-bot-v2"));
    assert_eq!(registry.versions("bot").await.unwrap().len(), 2);
}

#[tokio::test]
async fn failures_throttling_and_the_budget() {
    let fake = FakeDeployer::new(2);
    let registry = Registry::in_memory();
    let lc = lifecycle(&registry, Arc::new(fake.clone()));
    lc.create_model("bot", LifecyclePolicy::default()).await.unwrap();
    fake.inject(FakeFault::FailProvisioning);
    let err = lc.register_version("bot", model("m1")).await.unwrap_err();
    assert!(err.to_string().contains("capacity not available"), "{err}");
    // The failed deployment was deleted: nothing billed is left behind.
    assert!(fake.all().is_empty());
    assert_eq!(registry.versions("bot").await.unwrap().len(), 1);
    // The failed activation was rolled back: nothing is active.
    assert_eq!(registry.head("bot").await.unwrap().active_version, None);
    for _ in 0..3 {
        fake.inject(FakeFault::Throttle);
    }
    lc.activate("bot", 1).await.unwrap();
    assert_eq!(fake.counts().2, 3);
    assert_eq!(fake.all()[0].state, DeploymentState::Ready);

    let pricey = lifecycle(&registry, Arc::new(fake.clone()))
        .with_prices(PriceTable::default().with("Standard", 10.0))
        .with_max_hourly_cost(15.0);
    lc.register_version("bot", model("m2")).await.unwrap();
    // Replacing keeps the cost at 10/h: allowed.
    pricey.activate("bot", 2).await.unwrap();
    let policy = LifecyclePolicy { delete_previous: false, ..LifecyclePolicy::default() };
    pricey.create_model("keeper", policy).await.unwrap();
    pricey.register_version("keeper", model("k1")).await.unwrap();
    pricey.register_version("keeper", model("k2")).await.unwrap();
    // Keeping the previous one would make 20/h: refused before anything is made.
    let before = fake.all().len();
    let err = pricey.activate("keeper", 2).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");
    assert_eq!(fake.all().len(), before);
    assert_eq!(registry.head("keeper").await.unwrap().active_version, Some(1));
}

#[tokio::test]
async fn idle_deployments_are_flagged_and_ours_removed() {
    let fake = FakeDeployer::new(0);
    let registry = Registry::in_memory();
    let lc = lifecycle(&registry, Arc::new(fake.clone()));
    let keep = LifecyclePolicy { delete_previous: false, ..LifecyclePolicy::default() };
    lc.create_model("bot", keep).await.unwrap();
    lc.register_version("bot", model("m1")).await.unwrap();
    lc.register_version("bot", model("m2")).await.unwrap();
    fake.add_unmanaged("mine", "m1");
    lc.attach("bot", 1, "mine").await.unwrap();
    lc.activate("bot", 2).await.unwrap();
    // Nothing has been idle for an hour yet.
    assert!(
        lc.enforce_idle_limit(std::time::Duration::from_secs(3600), true).await.unwrap().is_empty()
    );
    let idle = lc.enforce_idle_limit(std::time::Duration::ZERO, true).await.unwrap();
    let mut seen: Vec<(String, bool)> = idle.iter().map(|d| (d.id.clone(), d.removed)).collect();
    seen.sort();
    assert_eq!(seen, vec![("ft-bot-v1".to_owned(), true), ("mine".to_owned(), false)]);
    let mut live: Vec<String> = fake.all().into_iter().map(|d| d.id).collect();
    live.sort();
    assert_eq!(live, vec!["ft-bot-v2".to_owned(), "mine".to_owned()]);
    assert_eq!(registry.head("bot").await.unwrap().active_deployment.as_deref(), Some("ft-bot-v2"));
}

#[test]
fn a_crash_at_any_call_is_finished_or_rolled_back() {
    for point in [CrashPoint::Before, CrashPoint::After] {
        for n in 1..30 {
            rt().block_on(async {
                let fake = FakeDeployer::new(1);
                let registry = Registry::in_memory();
                let crashing = CrashingDeployer::new(fake.clone(), n, point);
                let lc = lifecycle(&registry, Arc::new(crashing.clone()));
                lc.create_model("bot", LifecyclePolicy::default()).await.unwrap();
                let _ = lc.register_version("bot", model("m1")).await;
                let _ = lc.register_version("bot", model("m2")).await;
                let _ = lc.activate("bot", 2).await;
                drop(lc);
                let after = lifecycle(&registry, Arc::new(fake.clone()));
                let report = after.reconcile(false).await.unwrap();
                let head = registry.head("bot").await.unwrap();
                assert!(report.orphans.is_empty(), "{point:?} {n}: {report:?}");
                assert!(head.intents.is_empty(), "{point:?} {n}");
                let live: Vec<String> = fake.all().into_iter().map(|d| d.id).collect();
                assert_eq!(live.len(), 1, "{point:?} {n}: {live:?} {head:?}");
                assert_eq!(Some(&live[0]), head.active_deployment.as_ref(), "{point:?} {n}");
                assert_eq!(registry.versions("bot").await.unwrap().len(), 2);
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_activations_end_consistent() {
    let fake = FakeDeployer::new(2);
    let registry = Registry::in_memory();
    let setup = lifecycle(&registry, Arc::new(fake.clone()));
    setup.create_model("bot", LifecyclePolicy::default()).await.unwrap();
    for i in 1..=3 {
        setup.register_version("bot", model(&format!("m{i}"))).await.unwrap();
    }
    // Two processes: separate lifecycles over the same registry and platform.
    let a = lifecycle(&registry, Arc::new(fake.clone()));
    let b = lifecycle(&registry, Arc::new(fake.clone()));
    let (ra, rb) = tokio::join!(a.activate("bot", 2), b.activate("bot", 3));
    ra.unwrap();
    rb.unwrap();
    setup.reconcile(false).await.unwrap();
    let head = registry.head("bot").await.unwrap();
    let active = head.active_version.unwrap();
    assert!(active == 2 || active == 3);
    let id = head.active_deployment.clone().unwrap();
    assert_eq!(head.deployment(&id).unwrap().version, active);
    let live: Vec<String> = fake.all().into_iter().map(|d| d.id).collect();
    assert_eq!(live, vec![id], "{head:?}");
    assert_eq!(registry.versions("bot").await.unwrap().len(), 3);
}

#[tokio::test]
async fn concurrent_writers_on_disk_never_lose_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let r1 = Registry::local(dir.path()).unwrap();
    let r2 = Registry::local(dir.path()).unwrap();
    r1.create_model("bot", LifecyclePolicy::default()).await.unwrap();
    assert!(r2.create_model("bot", LifecyclePolicy::default()).await.is_err());
    let adds = (0..8).map(|i| {
        let r = if i % 2 == 0 { r1.clone() } else { r2.clone() };
        tokio::spawn(
            async move { r.add_version("bot", model(&format!("m{i}"))).await.unwrap().version },
        )
    });
    let updates = (0..8).map(|i| {
        let r = if i % 2 == 0 { r1.clone() } else { r2.clone() };
        tokio::spawn(async move {
            r.update("bot", |h| {
                h.deployments.push(finetune_deploy::DeploymentRecord::new(
                    format!("d{i}"),
                    1,
                    Origin::Attached,
                ));
                Ok(())
            })
            .await
            .unwrap();
        })
    });
    let mut numbers = Vec::new();
    for h in adds {
        numbers.push(h.await.unwrap());
    }
    for h in updates {
        h.await.unwrap();
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=8).collect::<Vec<u64>>());
    assert_eq!(r2.versions("bot").await.unwrap().len(), 8);
    assert_eq!(r1.head("bot").await.unwrap().deployments.len(), 8);
    assert_eq!(r1.models().await.unwrap(), vec!["bot".to_owned()]);
    assert!(r1.version("bot", 9).await.is_err());
    assert!(r1.create_model("bad name", LifecyclePolicy::default()).await.is_err());
}

// ------------------------------------------------------------ property ----

#[derive(Debug, Clone)]
enum Op {
    Register(usize),
    Activate(usize, u64),
    Deploy(usize, u64),
    Attach(usize, u64),
    Detach(usize),
    Delete(usize),
    Throttle,
    FailNext,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize).prop_map(Op::Register),
        3 => (0..2usize, 1..5u64).prop_map(|(m, v)| Op::Activate(m, v)),
        1 => (0..2usize, 1..5u64).prop_map(|(m, v)| Op::Deploy(m, v)),
        1 => (0..2usize, 1..5u64).prop_map(|(m, v)| Op::Attach(m, v)),
        1 => (0..2usize).prop_map(Op::Detach),
        1 => (0..2usize).prop_map(Op::Delete),
        1 => Just(Op::Throttle),
        1 => Just(Op::FailNext),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    policies: [LifecyclePolicy; 2],
    ops: Vec<Op>,
    crash: Option<(u64, CrashPoint)>,
    provisioning_polls: u32,
}

fn case() -> impl Strategy<Value = Case> {
    let policy = (any::<bool>(), any::<bool>()).prop_map(|(auto_deploy, delete_previous)| {
        LifecyclePolicy { auto_deploy, delete_previous, ..LifecyclePolicy::default() }
    });
    let crash = proptest::option::of((
        1..60u64,
        prop_oneof![Just(CrashPoint::Before), Just(CrashPoint::After)],
    ));
    (policy, proptest::collection::vec(op(), 1..14), crash, 0..3u32).prop_map(
        |(second, mut ops, crash, provisioning_polls)| {
            // At most two provisioning failures and three throttles a case:
            // reconcile rides out that many.
            let mut fails = 0;
            let mut throttles = 0;
            ops.retain(|o| match o {
                Op::FailNext => {
                    fails += 1;
                    fails <= 2
                }
                Op::Throttle => {
                    throttles += 1;
                    throttles <= 3
                }
                _ => true,
            });
            Case { policies: [LifecyclePolicy::default(), second], ops, crash, provisioning_polls }
        },
    )
}

const MODELS: [&str; 2] = ["alpha", "beta"];

/// Runs a case; the error names the broken invariant.
fn run_case(case: &Case, planted_leak: bool) -> Result<(), String> {
    rt().block_on(async {
        let fake = FakeDeployer::new(case.provisioning_polls);
        let registry = Registry::in_memory();
        let deployer: Arc<dyn Deployer> = match case.crash {
            Some((n, point)) => Arc::new(CrashingDeployer::new(fake.clone(), n, point)),
            None => Arc::new(fake.clone()),
        };
        let leaky = |d: Arc<dyn Deployer>| -> Arc<dyn Deployer> {
            if planted_leak { Arc::new(LeakingDeployer::new(d)) } else { d }
        };
        let lc = lifecycle(&registry, leaky(deployer));
        let mut registered = [0u64; 2];
        let mut attached = 0;
        for (m, name) in MODELS.iter().enumerate() {
            lc.create_model(name, case.policies[m].clone()).await.map_err(|e| e.to_string())?;
        }
        for op in &case.ops {
            let _ = match op {
                Op::Register(m) => {
                    registered[*m] += 1;
                    lc.register_version(
                        MODELS[*m],
                        model(&format!("{}-{}", MODELS[*m], registered[*m])),
                    )
                    .await
                    .map(|_| ())
                }
                Op::Activate(m, v) => lc.activate(MODELS[*m], *v).await.map(|_| ()),
                Op::Deploy(m, v) => lc.deploy(MODELS[*m], *v).await.map(|_| ()),
                Op::Attach(m, v) => {
                    attached += 1;
                    let id = format!("user-{attached}");
                    fake.add_unmanaged(&id, "x");
                    lc.attach(MODELS[*m], *v, &id).await.map(|_| ())
                }
                Op::Detach(m) | Op::Delete(m) => {
                    let head = registry.head(MODELS[*m]).await.map_err(|e| e.to_string())?;
                    let wanted = if matches!(op, Op::Detach(_)) {
                        Origin::Attached
                    } else {
                        Origin::Created
                    };
                    match head.deployments.iter().find(|d| d.origin == wanted) {
                        Some(d) if matches!(op, Op::Detach(_)) => {
                            lc.detach(MODELS[*m], &d.id).await.map(|_| ())
                        }
                        Some(d) => lc.delete_deployment(MODELS[*m], &d.id).await.map(|_| ()),
                        None => Ok(()),
                    }
                }
                Op::Throttle => {
                    fake.inject(FakeFault::Throttle);
                    Ok(())
                }
                Op::FailNext => {
                    fake.inject(FakeFault::FailProvisioning);
                    Ok(())
                }
            };
        }
        // The process (maybe crashed) is gone; a new one reconciles.
        drop(lc);
        let after = lifecycle(&registry, leaky(Arc::new(fake.clone())));
        let report = after.reconcile(false).await.map_err(|e| format!("reconcile failed: {e}"))?;
        // 1. No deployment with our tag that no version references.
        let mut referenced = Vec::new();
        for name in MODELS {
            referenced.extend(
                registry
                    .head(name)
                    .await
                    .map_err(|e| e.to_string())?
                    .deployments
                    .into_iter()
                    .map(|d| d.id),
            );
        }
        let leaked: Vec<String> = fake
            .all()
            .into_iter()
            .filter(|d| d.is_managed() && !referenced.contains(&d.id))
            .map(|d| d.id)
            .collect();
        if !leaked.is_empty() || !report.orphans.is_empty() {
            return Err(format!("leaked deployments {leaked:?}"));
        }
        for (m, name) in MODELS.iter().enumerate() {
            let head = registry.head(name).await.map_err(|e| e.to_string())?;
            if !head.intents.is_empty() {
                return Err(format!("{name}: intents left {:?}", head.intents));
            }
            // 2. Under auto-deploy, the active version is served.
            if head.policy.auto_deploy
                && let Some(v) = head.active_version
            {
                let id = head
                    .active_deployment
                    .clone()
                    .ok_or(format!("{name}: active version {v} has no deployment; {report:?}"))?;
                let record = head
                    .deployment(&id)
                    .ok_or(format!("{name}: active deployment {id} not recorded"))?;
                let live = fake.all().into_iter().find(|d| d.id == id);
                if record.version != v || live.map(|d| d.state) != Some(DeploymentState::Ready) {
                    return Err(format!(
                        "{name}: active deployment {id} does not serve version {v} ready"
                    ));
                }
            }
            // 3. Under delete-previous, at most one deployment of ours.
            if head.policy.delete_previous {
                let ours = fake
                    .all()
                    .into_iter()
                    .filter(|d| {
                        d.is_managed() && d.tags.get(MODEL_TAG).map(String::as_str) == Some(*name)
                    })
                    .count();
                if ours > 1 {
                    return Err(format!("{name}: {ours} deployments under delete-previous"));
                }
            }
            // 4. No version is lost.
            let versions: Vec<u64> = registry
                .versions(name)
                .await
                .map_err(|e| e.to_string())?
                .iter()
                .map(|v| v.version)
                .collect();
            if versions != (1..=registered[m]).collect::<Vec<_>>() {
                return Err(format!("{name}: versions {versions:?}, registered {}", registered[m]));
            }
        }
        Ok(())
    })
}

fn cases() -> u32 {
    std::env::var("FINETUNE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

#[test]
fn random_sequences_with_crashes_never_leak() {
    let config =
        ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let started = std::time::Instant::now();
    let result = runner.run(&case(), |c| run_case(&c, false).map_err(TestCaseError::fail));
    println!("{} cases in {:?}", cases(), started.elapsed());
    result.unwrap();
}

#[test]
fn the_property_catches_a_planted_leak() {
    let config =
        ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&case(), |c| run_case(&c, true).map_err(TestCaseError::fail));
    match result {
        Err(proptest::test_runner::TestError::Fail(reason, minimal)) => {
            println!("caught: {reason} with {minimal:?}");
            assert!(reason.to_string().contains("leaked"), "{reason}");
        }
        other => panic!("the planted leak went unnoticed: {other:?}"),
    }
}

/// The registry on S3 (moto's server, installed by `scripts/setup --test`):
/// create-only writes keep concurrent writers from losing anything there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_on_s3_keeps_every_concurrent_write() {
    let moto = finetune_providers::testing::Moto::start();
    moto.create_bucket("registry").await;
    let store = moto.store("registry");
    let registry = Registry::new(store, "finetune");
    registry.create_model("bot", LifecyclePolicy::default()).await.unwrap();
    assert!(registry.create_model("bot", LifecyclePolicy::default()).await.is_err());
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let r = registry.clone();
            tokio::spawn(async move {
                let v = r.add_version("bot", model(&format!("m{i}"))).await.unwrap().version;
                r.update("bot", |h| {
                    h.deployments.push(finetune_deploy::DeploymentRecord::new(
                        format!("d{i}"),
                        v,
                        Origin::Attached,
                    ));
                    Ok(())
                })
                .await
                .unwrap();
                v
            })
        })
        .collect();
    let mut numbers = Vec::new();
    for t in tasks {
        numbers.push(t.await.unwrap());
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=6).collect::<Vec<u64>>());
    assert_eq!(registry.head("bot").await.unwrap().deployments.len(), 6);
    assert_eq!(registry.versions("bot").await.unwrap().len(), 6);
}

/// The conformance suite over any deployer made from the fake.
struct Harness<D> {
    deployer: D,
    fake: FakeDeployer,
    timeout: Duration,
}

#[async_trait::async_trait]
impl<D: Deployer> DeployerHarness for Harness<D> {
    fn deployer(&self) -> &dyn Deployer {
        &self.deployer
    }

    async fn add_unmanaged(&self, name: &str) -> String {
        self.fake.add_unmanaged(name, "user-model");
        name.to_owned()
    }

    fn wait(&self) -> WaitPolicy {
        WaitPolicy { interval: Duration::from_millis(1), timeout: self.timeout }
    }
}

#[tokio::test]
async fn the_fake_passes_the_deployer_conformance_suite() {
    let fake = FakeDeployer::new(3);
    let harness = Harness { deployer: fake.clone(), fake, timeout: Duration::from_secs(5) };
    let report = run_deployer_conformance(&harness).await.unwrap();
    assert_eq!(report.passed.len(), 5, "{report:?}");
}

#[tokio::test]
async fn the_conformance_suite_fails_a_leaking_deployer() {
    let fake = FakeDeployer::new(1);
    let harness = Harness {
        deployer: LeakingDeployer::new(fake.clone()),
        fake,
        timeout: Duration::from_millis(50),
    };
    let failure = run_deployer_conformance(&harness).await.unwrap_err();
    assert_eq!(failure.check, "delete_leaves_nothing", "{failure}");
    assert!(failure.message.contains("leaked"), "{failure}");
}

#[tokio::test]
async fn the_conformance_suite_fails_a_deployer_that_never_becomes_ready() {
    // u32::MAX - 1 looks before ready: never, within the suite's wait.
    let fake = FakeDeployer::new(u32::MAX - 1);
    let harness = Harness { deployer: fake.clone(), fake, timeout: Duration::from_millis(100) };
    let failure = run_deployer_conformance(&harness).await.unwrap_err();
    assert_eq!(failure.check, "create_becomes_ready", "{failure}");
    assert!(failure.message.contains("never became ready"), "{failure}");
}

#[tokio::test]
async fn the_lifecycle_makes_each_platform_call_once() {
    // Without a retrying deployer, a throttled call fails the step: the
    // lifecycle does not retry on its own (the deployer's client does).
    let fake = FakeDeployer::new(0);
    let registry = Registry::in_memory();
    let lc =
        Lifecycle::new(registry.clone(), Arc::new(fake.clone())).with_wait(WaitPolicy::immediate());
    lc.create_model("bot", LifecyclePolicy::default()).await.unwrap();
    fake.inject(FakeFault::Throttle);
    let err = lc.register_version("bot", model("m1")).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(fake.counts(), (0, 0, 1));
}
