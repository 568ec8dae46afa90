//! Test support (feature `testing`): the [`Deployer`] conformance suite, a
//! stateful fake platform with slow provisioning, failures and throttling,
//! a wrapper that "kills the process" at a chosen platform call, and a
//! deliberately leaking deployer.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use finetune_core::{Error, Result};

use crate::deployer::{Deployer, Deployment, DeploymentSpec, DeploymentState, MANAGED_TAG};

mod conformance;

pub use conformance::{DeployerHarness, run_deployer_conformance};

/// A failure the fake answers to a coming call.
#[derive(Debug, Clone, PartialEq)]
pub enum FakeFault {
    /// The next call is throttled (429, retryable).
    Throttle,
    /// The next created deployment fails to provision.
    FailProvisioning,
}

#[derive(Debug, Default)]
struct State {
    deployments: BTreeMap<String, (Deployment, u32)>,
    faults: VecDeque<FakeFault>,
    creates: u64,
    deletes: u64,
    throttled: u64,
}

/// A stateful fake of a deployment platform: deployments take
/// `provisioning_polls` looks to become ready (or fail, when a failure was
/// queued), `create` is idempotent by name as Azure's PUT is, deleting what
/// is gone succeeds, and queued throttles answer 429.
#[derive(Debug, Clone)]
pub struct FakeDeployer {
    state: Arc<Mutex<State>>,
    provisioning_polls: u32,
}

impl FakeDeployer {
    /// A fake whose deployments are ready after `provisioning_polls` looks.
    pub fn new(provisioning_polls: u32) -> Self {
        Self { state: Arc::default(), provisioning_polls }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a fault.
    pub fn inject(&self, fault: FakeFault) {
        self.lock().faults.push_back(fault);
    }

    /// Adds a deployment made outside this library (no managed tag), as a
    /// user would have, ready.
    pub fn add_unmanaged(&self, id: &str, model_id: &str) {
        let d = Deployment {
            id: id.into(),
            name: id.into(),
            model_id: model_id.into(),
            state: DeploymentState::Ready,
            sku: "Standard".into(),
            capacity: 1,
            tags: BTreeMap::new(),
        };
        self.lock().deployments.insert(id.into(), (d, 0));
    }

    /// Every deployment that exists, managed or not.
    pub fn all(&self) -> Vec<Deployment> {
        self.lock().deployments.values().map(|(d, _)| d.clone()).collect()
    }

    /// Creates, deletes and throttled calls so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let s = self.lock();
        (s.creates, s.deletes, s.throttled)
    }

    fn throttled(&self) -> Result<()> {
        let mut s = self.lock();
        if s.faults.front() == Some(&FakeFault::Throttle) {
            s.faults.pop_front();
            s.throttled += 1;
            return Err(Error::RateLimited { retry_after: None, message: "throttled".into() });
        }
        Ok(())
    }
}

#[async_trait]
impl Deployer for FakeDeployer {
    fn name(&self) -> &str {
        "fake"
    }

    async fn create(&self, spec: &DeploymentSpec) -> Result<Deployment> {
        spec.check()?;
        self.throttled()?;
        let mut s = self.lock();
        if let Some((d, _)) = s.deployments.get(&spec.name) {
            return Ok(d.clone());
        }
        let fail = s.faults.front() == Some(&FakeFault::FailProvisioning);
        if fail {
            s.faults.pop_front();
        }
        let d = Deployment::creating(spec.name.clone(), spec);
        // Polls left; u32::MAX marks one that will fail.
        let polls = if fail { u32::MAX } else { self.provisioning_polls };
        let mut stored = d.clone();
        if polls == 0 {
            stored.state = DeploymentState::Ready;
        }
        s.deployments.insert(spec.name.clone(), (stored.clone(), polls));
        s.creates += 1;
        Ok(stored)
    }

    async fn get(&self, id: &str) -> Result<Option<Deployment>> {
        self.throttled()?;
        let mut s = self.lock();
        Ok(s.deployments.get_mut(id).map(|(d, polls)| {
            if d.state == DeploymentState::Creating {
                if *polls == u32::MAX {
                    d.state = DeploymentState::Failed { reason: "capacity not available".into() };
                } else if *polls <= 1 {
                    d.state = DeploymentState::Ready;
                } else {
                    *polls -= 1;
                }
            }
            d.clone()
        }))
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.throttled()?;
        let mut s = self.lock();
        if s.deployments.remove(id).is_some() {
            s.deletes += 1;
        }
        Ok(())
    }

    async fn list_managed(&self) -> Result<Vec<Deployment>> {
        self.throttled()?;
        Ok(self
            .lock()
            .deployments
            .values()
            .map(|(d, _)| d.clone())
            .filter(|d| d.tags.get(MANAGED_TAG).map(String::as_str) == Some("true"))
            .collect())
    }
}

/// Where a simulated crash strikes a platform call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Before the call reaches the platform: it has no effect.
    Before,
    /// After the platform carried it out: the answer is lost.
    After,
}

/// Wraps a deployer and "kills the process" at the `n`-th call: that call
/// and every later one fail, as if the process had died (a new process
/// builds a new lifecycle over the same registry and platform and runs
/// `reconcile`).
#[derive(Debug, Clone)]
pub struct CrashingDeployer<D> {
    inner: D,
    calls_left: Arc<AtomicI64>,
    point: CrashPoint,
}

impl<D: Deployer> CrashingDeployer<D> {
    /// Crashes at the `n`-th call (1-based) at `point`.
    pub fn new(inner: D, n: u64, point: CrashPoint) -> Self {
        Self { inner, calls_left: Arc::new(AtomicI64::new(n as i64)), point }
    }

    /// Whether the crash happened.
    pub fn crashed(&self) -> bool {
        self.calls_left.load(Ordering::SeqCst) <= 0
    }

    async fn guard<T, F>(&self, call: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let left = self.calls_left.fetch_sub(1, Ordering::SeqCst) - 1;
        let crash = || Error::Other { message: "simulated crash".into(), source: None };
        match (left, self.point) {
            (l, _) if l < 0 => Err(crash()),
            (0, CrashPoint::Before) => Err(crash()),
            (0, CrashPoint::After) => {
                let _ = call.await;
                Err(crash())
            }
            _ => call.await,
        }
    }
}

#[async_trait]
impl<D: Deployer> Deployer for CrashingDeployer<D> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn default_sku(&self) -> &str {
        self.inner.default_sku()
    }

    fn serves(&self, provider: &str) -> bool {
        self.inner.serves(provider)
    }

    async fn create(&self, spec: &DeploymentSpec) -> Result<Deployment> {
        self.guard(self.inner.create(spec)).await
    }

    async fn get(&self, id: &str) -> Result<Option<Deployment>> {
        self.guard(self.inner.get(id)).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.guard(self.inner.delete(id)).await
    }

    async fn list_managed(&self) -> Result<Vec<Deployment>> {
        self.guard(self.inner.list_managed()).await
    }
}

/// A broken deployer for proving that tests catch leaks: `delete` answers
/// success and deletes nothing, so everything "deleted" stays billed on the
/// platform. The lifecycle property test and the deployer conformance suite
/// must both fail with it.
#[derive(Debug, Clone)]
pub struct LeakingDeployer<D> {
    inner: D,
}

impl<D: Deployer> LeakingDeployer<D> {
    /// Wraps `inner`, whose deployments will never be deleted.
    pub fn new(inner: D) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl<D: Deployer> Deployer for LeakingDeployer<D> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn default_sku(&self) -> &str {
        self.inner.default_sku()
    }

    fn serves(&self, provider: &str) -> bool {
        self.inner.serves(provider)
    }

    async fn create(&self, spec: &DeploymentSpec) -> Result<Deployment> {
        self.inner.create(spec).await
    }

    async fn get(&self, id: &str) -> Result<Option<Deployment>> {
        self.inner.get(id).await
    }

    async fn delete(&self, _id: &str) -> Result<()> {
        Ok(())
    }

    async fn list_managed(&self) -> Result<Vec<Deployment>> {
        self.inner.list_managed().await
    }
}
