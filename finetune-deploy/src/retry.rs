//! [`RetryingDeployer`]: retries of throttled and transient platform errors
//! for a deployer whose client has none of its own.
//!
//! The Azure and Bedrock deployers retry inside their clients (the HTTP
//! layer's `RetryPolicy`, the AWS SDK's retry config), so one platform call
//! makes at most the attempts configured there; wrapping them again would
//! multiply the attempts. This decorator is for a deployer without such a
//! layer: a user's own platform, or the fake in tests.

use std::time::Duration;

use async_trait::async_trait;
use finetune_core::Result;

use crate::deployer::{Deployer, Deployment, DeploymentSpec};

/// Wraps a deployer and retries each call whose error
/// [`is_retryable`](finetune_core::Error::is_retryable), waiting the
/// error's `retry_after` or a delay doubled after each retry, whichever is
/// longer.
#[derive(Debug, Clone)]
pub struct RetryingDeployer<D> {
    inner: D,
    retries: u32,
    first_delay: Duration,
}

impl<D: Deployer> RetryingDeployer<D> {
    /// Up to `retries` retries of a call, the first after `first_delay`.
    pub fn new(inner: D, retries: u32, first_delay: Duration) -> Self {
        Self { inner, retries, first_delay }
    }

    /// The wrapped deployer.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T>> + Send,
        T: Send,
    {
        let mut delay = self.first_delay;
        let mut retried = 0;
        loop {
            match call().await {
                Err(e) if e.is_retryable() && retried < self.retries => {
                    retried += 1;
                    let wait = e.retry_after().unwrap_or(delay).max(delay);
                    tracing::warn!(error = %e, retried, "platform call failed, retrying");
                    tokio::time::sleep(wait).await;
                    delay = delay.saturating_mul(2);
                }
                other => return other,
            }
        }
    }
}

#[async_trait]
impl<D: Deployer> Deployer for RetryingDeployer<D> {
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
        self.retry(|| self.inner.create(spec)).await
    }

    async fn get(&self, id: &str) -> Result<Option<Deployment>> {
        self.retry(|| self.inner.get(id)).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.retry(|| self.inner.delete(id)).await
    }

    async fn list_managed(&self) -> Result<Vec<Deployment>> {
        self.retry(|| self.inner.list_managed()).await
    }
}
