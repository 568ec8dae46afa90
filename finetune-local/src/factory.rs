//! The local provider's [`ProviderFactory`]: a
//! [`ConnectionSettings::LocalHf`] connection's device, dtype, threads,
//! model cache and output folder become the [`Runtime`] of a
//! [`LocalProvider`], and of the [`LocalChatModel`] its models answer
//! through.

use std::sync::Arc;

use async_trait::async_trait;
use finetune_core::{
    ChatModel, Connection, ConnectionSettings, EnabledConnection, Error, FineTuneProvider,
    FineTunedModel, LocalHfSettings, Location, ProviderFactory, ProviderKind, Result,
};
use finetune_data::ObjectStores;

use crate::chat_model::LocalChatModel;
use crate::hub::ModelCache;
use crate::job::{Runtime, parse_device, parse_dtype};
use crate::provider::LocalProvider;

impl Runtime {
    /// The runtime a local connection describes; unset settings keep
    /// [`Runtime::default`]'s. `device` takes `auto` (the first GPU when
    /// there is one), `cpu`, `cuda` or `cuda:N`.
    pub fn from_settings(settings: &LocalHfSettings) -> Result<Self> {
        let bad = |field: &str, e: crate::LocalError| {
            Error::invalid_at(Location::column(format!("settings.{field}")), e.to_string())
        };
        let defaults = Self::default();
        let runtime = Self {
            device: match settings.device.as_deref() {
                None | Some("auto") => None,
                Some(d) => Some(parse_device(d).map_err(|e| bad("device", e))?),
            },
            dtype: settings
                .dtype
                .as_deref()
                .map(parse_dtype)
                .transpose()
                .map_err(|e| bad("dtype", e))?,
            threads: settings.threads,
            output_root: settings.output_dir.clone().unwrap_or(defaults.output_root),
            cache: settings.cache_dir.as_ref().map_or(defaults.cache, ModelCache::at),
        };
        Ok(runtime)
    }

    /// The runtime of a local connection.
    pub fn from_connection(connection: &Connection) -> Result<Self> {
        match &connection.settings {
            ConnectionSettings::LocalHf(settings) => Self::from_settings(settings),
            other => Err(Error::invalid(format!(
                "connection `{}` is for {}, not local_hf",
                connection.name,
                other.provider()
            ))),
        }
    }
}

/// Connects [`ConnectionSettings::LocalHf`] connections.
#[derive(Debug, Clone, Default)]
pub struct LocalFactory {
    stores: ObjectStores,
}

impl LocalFactory {
    /// Object stores the providers read remote datasets through.
    pub fn with_object_stores(mut self, stores: ObjectStores) -> Self {
        self.stores = stores;
        self
    }
}

#[async_trait]
impl ProviderFactory for LocalFactory {
    fn kind(&self) -> ProviderKind {
        ProviderKind::LocalHf
    }

    async fn connect(
        &self,
        connection: EnabledConnection<'_>,
    ) -> Result<Arc<dyn FineTuneProvider>> {
        if let ConnectionSettings::LocalHf(LocalHfSettings { container: Some(_), .. }) =
            &connection.settings
        {
            // Training here instead of in the configured container would
            // put the job on the wrong machine without a word.
            return Err(Error::Unsupported {
                message: format!(
                    "connection `{}` trains in a container on a cluster, which this version \
                     cannot submit yet; remove `container` to train in this process",
                    connection.name
                ),
            });
        }
        let runtime = Runtime::from_connection(&connection)?;
        Ok(Arc::new(LocalProvider::new(runtime).with_object_stores(self.stores.clone())))
    }

    /// Loads the model (base + adapter, or merged) with the connection's
    /// runtime; it needs no deployment.
    async fn chat_model(
        &self,
        connection: &Connection,
        model: &FineTunedModel,
        _deployment: Option<&str>,
    ) -> Result<Arc<dyn ChatModel>> {
        let runtime = Runtime::from_connection(connection)?;
        Ok(Arc::new(LocalChatModel::for_model(model, &runtime).await?))
    }
}
