//! How requests to Azure OpenAI are authenticated: an `api-key`, or Entra ID
//! tokens from an azure_core credential.

use std::fmt;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use finetune_core::{AzureAuth, Error, Result, Secret};

/// The Entra ID scope of Azure OpenAI.
pub const COGNITIVE_SERVICES_SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// How requests to Azure OpenAI are authenticated. `Debug` shows no secret.
#[derive(Clone)]
pub enum AzureCredential {
    /// The resource's `api-key`.
    ApiKey(Secret),
    /// Entra ID tokens from an azure_core credential (azure_identity's
    /// `ClientSecretCredential`, `ManagedIdentityCredential`,
    /// `AzureCliCredential`, or your own).
    Entra(Arc<dyn TokenCredential>),
}

impl fmt::Debug for AzureCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ApiKey(_) => f.write_str("ApiKey([REDACTED])"),
            Self::Entra(c) => f.debug_tuple("Entra").field(c).finish(),
        }
    }
}

impl AzureCredential {
    /// The credential a connection's [`AzureAuth`] names.
    pub fn from_auth(auth: &AzureAuth) -> Result<Self> {
        let failed = |e: azure_core::Error| Error::Authentication {
            message: format!("setting up the Entra ID credential failed: {e}"),
        };
        Ok(match auth {
            AzureAuth::ApiKey { key } => Self::ApiKey(key.clone()),
            AzureAuth::ClientSecret { tenant_id, client_id, client_secret } => Self::Entra(
                azure_identity::ClientSecretCredential::new(
                    tenant_id,
                    client_id.clone(),
                    client_secret.expose().to_owned().into(),
                    None,
                )
                .map_err(failed)?,
            ),
            AzureAuth::AzureCli => {
                Self::Entra(azure_identity::AzureCliCredential::new(None).map_err(failed)?)
            }
            AzureAuth::ManagedIdentity { client_id } => {
                let options = azure_identity::ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id
                        .clone()
                        .map(azure_identity::UserAssignedId::ClientId),
                    ..Default::default()
                };
                Self::Entra(
                    azure_identity::ManagedIdentityCredential::new(Some(options))
                        .map_err(failed)?,
                )
            }
            AzureAuth::StaticToken { token } => {
                Self::Entra(Arc::new(StaticTokenCredential(token.clone())))
            }
            other => {
                return Err(Error::Unsupported {
                    message: format!("Azure authentication {other:?} is not supported yet"),
                });
            }
        })
    }
}
/// An Entra ID token obtained elsewhere, handed out as it is for every
/// scope ([`AzureAuth::StaticToken`]). `Debug` shows no token.
#[derive(Clone)]
pub struct StaticTokenCredential(Secret);

impl StaticTokenCredential {
    /// A credential answering with `token`.
    pub fn new(token: Secret) -> Self {
        Self(token)
    }
}

impl fmt::Debug for StaticTokenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticTokenCredential([REDACTED])")
    }
}

#[async_trait::async_trait]
impl TokenCredential for StaticTokenCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        // Its lifetime is unknown here: callers refresh nothing, so say it
        // lasts the hour tokens usually last.
        let expires =
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1);
        Ok(azure_core::credentials::AccessToken::new(self.0.expose().to_owned(), expires))
    }
}
