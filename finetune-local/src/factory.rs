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

impl LocalFactory {
    /// The provider of a connection that trains in a container on a
    /// cluster (feature `kubernetes`).
    #[cfg(feature = "kubernetes")]
    async fn cluster(
        &self,
        connection: &Connection,
        container: &finetune_core::ContainerConfig,
    ) -> Result<Arc<dyn FineTuneProvider>> {
        let bad = |e: String| {
            Error::invalid(format!(
                "connection `{}`: the cluster's configuration: {e}",
                connection.name
            ))
        };
        let config = match &container.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| bad(format!("{}: {e}", path.display())))?;
                let options = kube::config::KubeConfigOptions {
                    context: container.context.clone(),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| bad(e.to_string()))?
            }
            None => kube::Config::infer().await.map_err(|e| bad(e.to_string()))?,
        };
        let client = kube::Client::try_from(config)
            .map_err(|e| Error::other("connecting to the Kubernetes API", e))?;
        let runtime = Runtime::from_connection(connection)?;
        let local = LocalProvider::new(runtime).with_object_stores(self.stores.clone());
        Ok(Arc::new(crate::kubernetes::KubernetesProvider::new(
            local,
            client,
            (*container).clone(),
        )))
    }

    /// Without the `kubernetes` feature a container connection is refused:
    /// training here instead would put the job on the wrong machine.
    #[cfg(not(feature = "kubernetes"))]
    async fn cluster(
        &self,
        connection: &Connection,
        _container: &finetune_core::ContainerConfig,
    ) -> Result<Arc<dyn FineTuneProvider>> {
        Err(Error::Unsupported {
            message: format!(
                "connection `{}` trains in a container on a cluster: build finetune-local with \
                 its `kubernetes` feature (or remove `container` to train in this process)",
                connection.name
            ),
        })
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
        if let ConnectionSettings::LocalHf(LocalHfSettings { container: Some(container), .. }) =
            &connection.settings
        {
            return self.cluster(&connection, container).await;
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
