//! The deployer of a connection's platform, so that code holding a
//! [`Connection`] deploys without knowing which platform it is.

use std::sync::Arc;

use finetune_core::{Connection, ConnectionSettings, Error, Result};

use crate::Deployer;

/// The deployer for the models of `connection`: Azure OpenAI deployments
/// through Azure Resource Manager (the connection names subscription,
/// resource group and account, and authenticates with Entra ID: ARM takes
/// no api key), or Bedrock's custom model deployments and provisioned
/// throughput. `None` for platforms that serve fine-tuned models without a
/// deployment (OpenAI, local). A platform whose feature is not compiled in
/// is [`Error::Unsupported`].
pub async fn deployer_for(connection: &Connection) -> Result<Option<Arc<dyn Deployer>>> {
    match &connection.settings {
        ConnectionSettings::AzureOpenAi(settings) => azure(connection, settings).map(Some),
        ConnectionSettings::Bedrock(_) => bedrock(connection).await.map(Some),
        _ => Ok(None),
    }
}

#[cfg(feature = "azure")]
fn azure(
    connection: &Connection,
    settings: &finetune_core::AzureOpenAiSettings,
) -> Result<Arc<dyn Deployer>> {
    use finetune_core::Location;
    use finetune_providers::azure::AzureCredential;

    use crate::{ArmCredential, AzureDeployer, AzureDeployerConfig};

    let missing = |field: &str| {
        Error::invalid_at(
            Location::column(format!("settings.{field}")),
            format!(
                "connection `{}` cannot deploy: it names no {field} (deployments are made in \
                 Azure Resource Manager, which needs subscription_id, resource_group and account)",
                connection.name
            ),
        )
    };
    let subscription =
        settings.subscription_id.clone().ok_or_else(|| missing("subscription_id"))?;
    let group = settings.resource_group.clone().ok_or_else(|| missing("resource_group"))?;
    let account = settings.account_name().ok_or_else(|| missing("account"))?;
    let credential = match AzureCredential::from_auth(&settings.auth)? {
        AzureCredential::Entra(credential) => ArmCredential::Entra(credential),
        AzureCredential::ApiKey(_) => {
            return Err(Error::Unsupported {
                message: format!(
                    "connection `{}` authenticates with an api key, which fine-tunes and chats \
                     but cannot deploy: deployments go through Azure Resource Manager, which \
                     needs an Entra ID credential (client secret, Azure CLI or managed identity)",
                    connection.name
                ),
            });
        }
    };
    let mut config = AzureDeployerConfig::new(subscription, group, account, credential);
    if let Some(endpoint) = &settings.arm_endpoint {
        config = config.with_endpoint(endpoint.clone());
    }
    Ok(Arc::new(AzureDeployer::new(config)?))
}

#[cfg(not(feature = "azure"))]
fn azure(
    _connection: &Connection,
    _settings: &finetune_core::AzureOpenAiSettings,
) -> Result<Arc<dyn Deployer>> {
    Err(Error::Unsupported {
        message: "finetune-deploy was built without its `azure` feature".into(),
    })
}

#[cfg(feature = "bedrock")]
async fn bedrock(connection: &Connection) -> Result<Arc<dyn Deployer>> {
    use finetune_providers::{BedrockConfig, BedrockProvider};
    let provider = BedrockProvider::new(BedrockConfig::from_connection(connection)?).await?;
    Ok(Arc::new(crate::BedrockDeployer::new(provider.control_client().clone())))
}

#[cfg(not(feature = "bedrock"))]
async fn bedrock(_connection: &Connection) -> Result<Arc<dyn Deployer>> {
    Err(Error::Unsupported {
        message: "finetune-deploy was built without its `bedrock` feature".into(),
    })
}
