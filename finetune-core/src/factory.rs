//! Connections become providers: the [`ProviderFactory`] a provider crate
//! implements once, and [`Providers`], the set a platform fills with the
//! factories it links.
//!
//! Connecting always applies the connection's administrator switch: a
//! factory's [`ProviderFactory::connect`] takes an [`EnabledConnection`],
//! which only [`Connection::enabled`] makes, so no factory can be handed a
//! connection whose `fine_tuning_enabled` is off. Opening a chat model does
//! not need the switch: using a model that exists is not fine-tuning.
//!
//! ```
//! use finetune_core::testing::MemoryFactory;
//! use finetune_core::{ChatRequest, Connection, ConnectionSettings, Providers};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let providers = Providers::new().with(MemoryFactory::default());
//! let connection = Connection::new("lab", MemoryFactory::settings()).with_fine_tuning_enabled(true);
//! let provider = providers.connect(&connection).await?;
//! assert_eq!(provider.name(), "memory");
//!
//! let off = Connection::new("lab-off", MemoryFactory::settings());
//! assert!(providers.connect(&off).await.unwrap_err().to_string().contains("lab-off"));
//! # Ok::<(), finetune_core::Error>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use async_trait::async_trait;

use crate::chat::ChatModel;
use crate::connection::{Connection, ProviderKind};
use crate::error::{Error, Result};
use crate::model::FineTunedModel;
use crate::provider::FineTuneProvider;

/// A connection whose administrator enabled fine-tuning. Made only by
/// [`Connection::enabled`].
#[derive(Debug, Clone, Copy)]
pub struct EnabledConnection<'a>(&'a Connection);

impl Connection {
    /// This connection as one fine-tuning may go through, or
    /// [`Error::FineTuningDisabled`] naming it.
    pub fn enabled(&self) -> Result<EnabledConnection<'_>> {
        self.ensure_fine_tuning_enabled()?;
        Ok(EnabledConnection(self))
    }
}

impl Deref for EnabledConnection<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.0
    }
}

/// What a provider crate implements once so that platforms reach its
/// backend from a [`Connection`].
#[async_trait]
pub trait ProviderFactory: Send + Sync + fmt::Debug {
    /// The kind of connection it serves.
    fn kind(&self) -> ProviderKind;

    /// The provider for an enabled connection of this kind. Builds clients;
    /// sends nothing.
    async fn connect(&self, connection: EnabledConnection<'_>)
    -> Result<Arc<dyn FineTuneProvider>>;

    /// A chat model for one of this provider's fine-tuned models. Where the
    /// provider serves fine-tuned models only through deployments,
    /// `deployment` names the one to use (an Azure deployment name, a
    /// Bedrock deployment or provisioned-throughput ARN) and its absence is
    /// [`Error::NotDeployed`].
    async fn chat_model(
        &self,
        connection: &Connection,
        model: &FineTunedModel,
        deployment: Option<&str>,
    ) -> Result<Arc<dyn ChatModel>>;
}

/// The factories a platform links, by kind.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    factories: Vec<Arc<dyn ProviderFactory>>,
}

impl Providers {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a factory; one of the same kind already there is replaced.
    pub fn with(mut self, factory: impl ProviderFactory + 'static) -> Self {
        self.add(Arc::new(factory));
        self
    }

    /// Adds a shared factory; one of the same kind already there is replaced.
    pub fn with_shared(mut self, factory: Arc<dyn ProviderFactory>) -> Self {
        self.add(factory);
        self
    }

    /// Adds a shared factory; one of the same kind already there is replaced.
    pub fn add(&mut self, factory: Arc<dyn ProviderFactory>) {
        let kind = factory.kind();
        self.factories.retain(|f| f.kind() != kind);
        self.factories.push(factory);
    }

    /// The kinds it can connect.
    pub fn kinds(&self) -> Vec<ProviderKind> {
        self.factories.iter().map(|f| f.kind()).collect()
    }

    /// The factory for `kind`.
    pub fn factory(&self, kind: &ProviderKind) -> Result<&dyn ProviderFactory> {
        self.factories.iter().find(|f| &f.kind() == kind).map(|f| &**f).ok_or_else(|| {
            let known: Vec<String> = self.kinds().iter().map(ToString::to_string).collect();
            Error::Unsupported {
                message: format!(
                    "no provider for `{kind}` connections is linked (linked: {})",
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ),
            }
        })
    }

    /// The provider for `connection`: refused with
    /// [`Error::FineTuningDisabled`] before anything else when its
    /// administrator has not enabled fine-tuning.
    pub async fn connect(&self, connection: &Connection) -> Result<Arc<dyn FineTuneProvider>> {
        let enabled = connection.enabled()?;
        self.factory(&connection.provider())?.connect(enabled).await
    }

    /// A chat model for `model`, trained through `connection` (see
    /// [`ProviderFactory::chat_model`]).
    pub async fn chat_model(
        &self,
        connection: &Connection,
        model: &FineTunedModel,
        deployment: Option<&str>,
    ) -> Result<Arc<dyn ChatModel>> {
        self.factory(&connection.provider())?.chat_model(connection, model, deployment).await
    }
}

/// The common refusal of a chat model for a model that must be deployed
/// first: what a factory returns when `deployment` is `None` and
/// `model.requires_deployment`.
pub fn require_deployment<'a>(
    model: &FineTunedModel,
    deployment: Option<&'a str>,
) -> Result<&'a str> {
    deployment.ok_or_else(|| Error::NotDeployed { model: model.model_id.clone() })
}

/// Refuses a connection of another kind than the factory's.
pub fn expect_kind(connection: &Connection, kind: &ProviderKind) -> Result<()> {
    if &connection.provider() == kind {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "connection `{}` is for {}, not {kind}",
            connection.name,
            connection.provider()
        )))
    }
}
