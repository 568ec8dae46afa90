//! What OpenAI does its own way on the shared protocol.

use finetune_core::{Error, JobSpec, Location, Result};

use crate::REQUEST_ID_LABEL;
use crate::openai_compatible::wire::WireJob;
use crate::openai_compatible::{CreateRequest, Host, learning_rate_json};

/// OpenAI: models are called by id, jobs keep metadata (which carries the
/// request id a lost create is found by), hyperparameters may be `auto`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAi;

impl Host for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn kind(&self) -> finetune_core::ProviderKind {
        finetune_core::ProviderKind::OpenAi
    }

    fn requires_deployment(&self) -> bool {
        false
    }

    fn check_spec(&self, spec: &JobSpec) -> Result<()> {
        if let Some(suffix) = &spec.suffix
            && suffix.chars().count() > 64
        {
            return Err(Error::invalid_at(
                Location::column("suffix"),
                "OpenAI takes at most 64 characters",
            ));
        }
        // One of OpenAI's 16 metadata pairs carries the request id.
        if spec.metadata.len() > 15 {
            return Err(Error::invalid_at(
                Location::column("metadata"),
                format!("at most 15 labels, got {}", spec.metadata.len()),
            ));
        }
        for (k, v) in &spec.metadata {
            if k.chars().count() > 64 || v.chars().count() > 512 || k == REQUEST_ID_LABEL {
                return Err(Error::invalid_at(
                    Location::column(format!("metadata.{k}")),
                    format!(
                        "keys take at most 64 characters, values 512, and `{REQUEST_ID_LABEL}` \
                         is reserved"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn files_query(&self) -> Vec<(&'static str, String)> {
        vec![("purpose", "fine-tune".to_owned()), ("limit", "10000".to_owned())]
    }

    fn complete_create_body(&self, body: &mut serde_json::Value, spec: &JobSpec, request_id: &str) {
        let h = &spec.hyperparameters;
        body["method"] = serde_json::json!({
            "type": "supervised",
            "supervised": { "hyperparameters": {
                "n_epochs": serde_json::to_value(h.epochs).unwrap_or_default(),
                "batch_size": serde_json::to_value(h.batch_size).unwrap_or_default(),
                "learning_rate_multiplier": learning_rate_json(h.learning_rate),
            }},
        });
        let mut metadata: serde_json::Map<String, serde_json::Value> =
            spec.metadata.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
        metadata.insert(REQUEST_ID_LABEL.into(), request_id.into());
        body["metadata"] = metadata.into();
    }

    fn created_job_query(&self, request: &CreateRequest<'_>) -> Vec<(String, String)> {
        vec![
            (format!("metadata[{REQUEST_ID_LABEL}]"), request.request_id.to_owned()),
            ("limit".into(), "10".into()),
        ]
    }

    fn is_created_job(&self, job: &WireJob, request: &CreateRequest<'_>) -> bool {
        job.metadata.as_ref().and_then(|m| m.get(REQUEST_ID_LABEL)).map(String::as_str)
            == Some(request.request_id)
    }

    fn chat_request(
        &self,
        target: &str,
        request: &finetune_core::ChatRequest,
    ) -> Result<(String, serde_json::Value)> {
        let mut body = crate::openai_compatible::chat_body(request);
        body["model"] = target.into();
        if let Some(n) = request.max_tokens {
            body["max_completion_tokens"] = n.into();
        }
        Ok(("/chat/completions".to_owned(), body))
    }
}
