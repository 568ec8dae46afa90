//! The runtime: a deployed custom model (or any model) answers through
//! bedrock-runtime's Converse.

use finetune_core::{Error, Location, Result};

use super::{BedrockProvider, aws_error};
use crate::chat::{ChatCompletion, ChatMessage};

impl BedrockProvider {
    /// Asks the model (a deployment ARN, a provisioned throughput ARN or a
    /// foundation model id) through bedrock-runtime's Converse.
    pub async fn converse(
        &self,
        model: &str,
        messages: &[ChatMessage],
        max_tokens: Option<u32>,
    ) -> Result<ChatCompletion> {
        use aws_sdk_bedrockruntime::operation::RequestId;
        use aws_sdk_bedrockruntime::types::{
            ContentBlock, ConversationRole, InferenceConfiguration, Message, SystemContentBlock,
        };
        let mut request = self.runtime.converse().model_id(model);
        for m in messages {
            let role = match m.role.as_str() {
                "system" => {
                    request = request.system(SystemContentBlock::Text(m.content.clone()));
                    continue;
                }
                "user" => ConversationRole::User,
                "assistant" => ConversationRole::Assistant,
                other => {
                    return Err(Error::invalid_at(
                        Location::column("messages.role"),
                        format!(
                            "Converse takes system, user and assistant messages, not `{other}`"
                        ),
                    ));
                }
            };
            request = request.messages(
                Message::builder()
                    .role(role)
                    .content(ContentBlock::Text(m.content.clone()))
                    .build()
                    .map_err(|e| Error::other("building a message", e))?,
            );
        }
        if let Some(n) = max_tokens {
            request = request.inference_config(
                InferenceConfiguration::builder()
                    .max_tokens(i32::try_from(n).unwrap_or(i32::MAX))
                    .build(),
            );
        }
        let out = request.send().await.map_err(|e| aws_error("converse", e))?;
        let content = match out.output() {
            Some(aws_sdk_bedrockruntime::types::ConverseOutput::Message(m)) => m
                .content()
                .iter()
                .filter_map(|b| b.as_text().ok().cloned())
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        };
        Ok(ChatCompletion {
            id: out.request_id().unwrap_or_default().to_owned(),
            model: model.to_owned(),
            content,
            finish_reason: Some(out.stop_reason().as_str().to_owned()),
        })
    }
}
