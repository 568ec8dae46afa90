//! The runtime: a deployed custom model (or any model) answers through
//! bedrock-runtime's Converse, as a [`ChatModel`].

use std::sync::Arc;

use async_trait::async_trait;
use finetune_core::{
    ChatModel, ChatRequest, ChatResponse, Error, FinishReason, Result, Role, Usage,
};

use super::{BedrockProvider, aws_error};

/// A model answering through Converse: an on-demand custom model
/// deployment's ARN, a provisioned throughput's ARN, or a foundation model
/// id. Converse takes no seed: a request's `seed` is not sent.
pub struct ConverseChat {
    provider: Arc<BedrockProvider>,
    target: String,
}

impl std::fmt::Debug for ConverseChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConverseChat").field("target", &self.target).finish_non_exhaustive()
    }
}

impl BedrockProvider {
    /// `target` (a deployment or provisioned throughput ARN, or a
    /// foundation model id) as a chat model.
    pub fn chat_model(self: &Arc<Self>, target: impl Into<String>) -> Arc<dyn ChatModel> {
        Arc::new(ConverseChat { provider: Arc::clone(self), target: target.into() })
    }
}

#[async_trait]
impl ChatModel for ConverseChat {
    fn target(&self) -> &str {
        &self.target
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse> {
        use aws_sdk_bedrockruntime::types::{
            ContentBlock, ConversationRole, InferenceConfiguration, Message, SystemContentBlock,
        };
        request.check()?;
        let mut call = self.provider.runtime.converse().model_id(&self.target);
        for m in &request.messages {
            let role = match m.role {
                Role::System => {
                    call = call.system(SystemContentBlock::Text(m.content.clone()));
                    continue;
                }
                Role::User => ConversationRole::User,
                Role::Assistant => ConversationRole::Assistant,
            };
            call = call.messages(
                Message::builder()
                    .role(role)
                    .content(ContentBlock::Text(m.content.clone()))
                    .build()
                    .map_err(|e| Error::other("building a message", e))?,
            );
        }
        let mut inference = InferenceConfiguration::builder();
        if let Some(n) = request.max_tokens {
            inference = inference.max_tokens(i32::try_from(n).unwrap_or(i32::MAX));
        }
        if let Some(t) = request.temperature {
            inference = inference.temperature(t as f32);
        }
        if let Some(p) = request.top_p {
            inference = inference.top_p(p as f32);
        }
        for s in &request.stop {
            inference = inference.stop_sequences(s.clone());
        }
        let out = call
            .inference_config(inference.build())
            .send()
            .await
            .map_err(|e| aws_error("converse", e))?;
        let text = match out.output() {
            Some(aws_sdk_bedrockruntime::types::ConverseOutput::Message(m)) => m
                .content()
                .iter()
                .filter_map(|b| b.as_text().ok().cloned())
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        };
        let usage = out.usage().map_or(Usage::default(), |u| Usage {
            prompt_tokens: u64::try_from(u.input_tokens()).unwrap_or(0),
            completion_tokens: u64::try_from(u.output_tokens()).unwrap_or(0),
        });
        Ok(ChatResponse {
            text,
            finish_reason: FinishReason::from_backend(out.stop_reason().as_str()),
            usage,
            model: self.target.clone(),
        })
    }
}
