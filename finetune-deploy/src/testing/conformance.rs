//! The conformance suite every [`Deployer`] runs, as `finetune-core`'s runs
//! every provider.
//!
//! A deployer's tests implement [`DeployerHarness`] over the platform they
//! control (the fake, an ARM fake, a Bedrock fake) and call
//! [`run_deployer_conformance`]. It checks what the lifecycle relies on:
//!
//! * an invalid spec is refused with `InvalidInput` and creates nothing;
//! * a created deployment becomes ready (within the harness's wait policy);
//! * creating the same name again returns the same deployment, not a
//!   second billed one (a replayed create after a lost answer);
//! * listing returns our tagged deployments and none made outside the
//!   library, which stay readable by id (to be attached);
//! * a deleted deployment is gone (no leak), and deleting it again succeeds.
//!
//! ```
//! use finetune_deploy::Deployer;
//! use finetune_deploy::testing::{DeployerHarness, FakeDeployer, run_deployer_conformance};
//!
//! struct Harness(FakeDeployer);
//!
//! #[async_trait::async_trait]
//! impl DeployerHarness for Harness {
//!     fn deployer(&self) -> &dyn Deployer {
//!         &self.0
//!     }
//!     async fn add_unmanaged(&self, name: &str) -> String {
//!         self.0.add_unmanaged(name, "some-model");
//!         name.to_owned()
//!     }
//! }
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let report = run_deployer_conformance(&Harness(FakeDeployer::new(2))).await.unwrap();
//! assert_eq!(report.passed.len(), 5);
//! # });
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use finetune_core::Error;
use finetune_core::testing::{ConformanceFailure, ConformanceReport};
use tokio::time::Instant;

use crate::deployer::{
    Deployer, Deployment, DeploymentSpec, DeploymentState, MANAGED_TAG, MODEL_TAG,
};
use crate::lifecycle::WaitPolicy;

/// What the suite needs from a deployer's test setup.
#[async_trait]
pub trait DeployerHarness: Send + Sync {
    /// The deployer under test.
    fn deployer(&self) -> &dyn Deployer;

    /// A spec the platform accepts, named `name`; the suite adds the
    /// managed and model tags.
    fn spec(&self, name: &str) -> DeploymentSpec {
        DeploymentSpec {
            name: name.to_owned(),
            model_id: "conformance-model".to_owned(),
            sku: "Standard".to_owned(),
            capacity: 1,
            tags: BTreeMap::new(),
        }
    }

    /// Makes a ready deployment on the platform outside this library (no
    /// managed tag), as a user would, and returns its id.
    async fn add_unmanaged(&self, name: &str) -> String;

    /// How long the suite waits for a deployment to become ready or gone.
    fn wait(&self) -> WaitPolicy {
        WaitPolicy { interval: Duration::from_millis(5), timeout: Duration::from_secs(30) }
    }
}

const INVALID: &str = "invalid_spec_refused";
const READY: &str = "create_becomes_ready";
const REPLAY: &str = "replayed_create_is_the_same_deployment";
const LIST: &str = "lists_only_managed";
const DELETE: &str = "delete_leaves_nothing";

fn fail(check: &'static str, message: impl Into<String>) -> ConformanceFailure {
    ConformanceFailure { check, message: message.into() }
}

fn managed(harness: &dyn DeployerHarness, name: &str) -> DeploymentSpec {
    let mut spec = harness.spec(name);
    spec.tags.insert(MANAGED_TAG.to_owned(), "true".to_owned());
    spec.tags.insert(MODEL_TAG.to_owned(), "conformance".to_owned());
    spec
}

async fn listed(
    check: &'static str,
    deployer: &dyn Deployer,
) -> Result<Vec<Deployment>, ConformanceFailure> {
    deployer.list_managed().await.map_err(|e| fail(check, format!("list_managed failed: {e}")))
}

/// Runs every check, stopping at the first failure.
pub async fn run_deployer_conformance(
    harness: &dyn DeployerHarness,
) -> Result<ConformanceReport, ConformanceFailure> {
    let deployer = harness.deployer();
    let wait = harness.wait();

    // An invalid spec: refused before the platform, nothing created.
    let mut bad = managed(harness, "conformance-bad");
    bad.name = "not a deployment name!".to_owned();
    match deployer.create(&bad).await {
        Err(Error::InvalidInput { .. }) => {}
        Err(e) => return Err(fail(INVALID, format!("refused, but not as invalid input: {e}"))),
        Ok(d) => return Err(fail(INVALID, format!("created {} from an invalid name", d.id))),
    }
    if listed(INVALID, deployer).await?.iter().any(|d| d.name == bad.name) {
        return Err(fail(INVALID, "the refused spec was deployed anyway"));
    }
    let mut passed = vec![INVALID];

    // Create, then look until ready.
    let spec = managed(harness, "conformance-a");
    let created =
        deployer.create(&spec).await.map_err(|e| fail(READY, format!("create failed: {e}")))?;
    if created.name != spec.name {
        return Err(fail(READY, format!("asked for {}, got {}", spec.name, created.name)));
    }
    let deadline = Instant::now() + wait.timeout;
    loop {
        let now = deployer
            .get(&created.id)
            .await
            .map_err(|e| fail(READY, format!("get failed: {e}")))?
            .ok_or_else(|| fail(READY, format!("{} vanished while provisioning", created.id)))?;
        match now.state {
            DeploymentState::Ready => break,
            DeploymentState::Failed { reason } => {
                return Err(fail(READY, format!("provisioning failed: {reason}")));
            }
            state if Instant::now() >= deadline => {
                return Err(fail(
                    READY,
                    format!("never became ready within {:?} (still {state})", wait.timeout),
                ));
            }
            _ => tokio::time::sleep(wait.interval).await,
        }
    }
    passed.push(READY);

    // A replayed create finds the deployment by name.
    let again = deployer
        .create(&spec)
        .await
        .map_err(|e| fail(REPLAY, format!("the second create failed: {e}")))?;
    if again.id != created.id {
        return Err(fail(
            REPLAY,
            format!("a second deployment {} beside {}", again.id, created.id),
        ));
    }
    let same_name = listed(REPLAY, deployer).await?.iter().filter(|d| d.name == spec.name).count();
    if same_name != 1 {
        return Err(fail(REPLAY, format!("{same_name} deployments named {}", spec.name)));
    }
    passed.push(REPLAY);

    // Listing: ours, and not the user's, which stays readable by id.
    let user = harness.add_unmanaged("conformance-user").await;
    let list = listed(LIST, deployer).await?;
    if !list.iter().any(|d| d.id == created.id) {
        return Err(fail(LIST, format!("{} is missing from the listing", created.id)));
    }
    if let Some(d) = list.iter().find(|d| d.id == user || !d.is_managed()) {
        return Err(fail(LIST, format!("{} is listed but carries no managed tag", d.id)));
    }
    match deployer.get(&user).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(fail(LIST, format!("the user's deployment {user} is not found"))),
        Err(e) => return Err(fail(LIST, format!("get of the user's deployment failed: {e}"))),
    }
    passed.push(LIST);

    // Delete: gone within the wait, gone from the listing, idempotent.
    deployer.delete(&created.id).await.map_err(|e| fail(DELETE, format!("delete failed: {e}")))?;
    let deadline = Instant::now() + wait.timeout;
    loop {
        match deployer.get(&created.id).await {
            Ok(None) => break,
            Ok(Some(d)) if Instant::now() >= deadline => {
                return Err(fail(
                    DELETE,
                    format!("{} still exists ({}) after delete: leaked", d.id, d.state),
                ));
            }
            Ok(Some(_)) => tokio::time::sleep(wait.interval).await,
            Err(e) => return Err(fail(DELETE, format!("get after delete failed: {e}"))),
        }
    }
    if listed(DELETE, deployer).await?.iter().any(|d| d.id == created.id) {
        return Err(fail(DELETE, format!("{} is still listed after delete", created.id)));
    }
    deployer
        .delete(&created.id)
        .await
        .map_err(|e| fail(DELETE, format!("deleting what is gone failed: {e}")))?;
    passed.push(DELETE);
    Ok(ConformanceReport { passed })
}
