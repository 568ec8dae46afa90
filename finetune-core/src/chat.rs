//! Chat: how a fine-tuned model is used like any other LLM.
//!
//! Every backend's models answer through [`ChatModel`] with one request and
//! one response type, whether the model lives behind OpenAI's chat
//! completions, an Azure OpenAI deployment, Bedrock's Converse or libtorch
//! on this machine. [`ChatMessage`] is the one message type of the
//! workspace: datasets become messages, chat templates render them.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Location, Result};

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// `system`, `user` or `assistant`, as the APIs and templates spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks it.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message (an earlier answer, or a training target).
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// A request to a chat model. Unset sampling settings take the backend's
/// defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far; the last message is usually the user's.
    pub messages: Vec<ChatMessage>,
    /// The most tokens to generate.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature (0 to 2); 0 is greedy.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling: the probability mass to sample from, in (0, 1].
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Generation ends before any of these strings (at most 4).
    #[serde(default)]
    pub stop: Vec<String>,
    /// A seed for reproducible sampling, where the backend takes one.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// The most stop sequences a request may carry: OpenAI's and Bedrock's
/// limit for most models.
pub const MAX_STOP_SEQUENCES: usize = 4;

impl ChatRequest {
    /// A request with these messages.
    pub fn new(messages: impl IntoIterator<Item = ChatMessage>) -> Self {
        Self { messages: messages.into_iter().collect(), ..Self::default() }
    }

    /// A request of one user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new([ChatMessage::user(content)])
    }

    /// Puts a system message first (replacing one that is there).
    pub fn with_system(mut self, content: impl Into<String>) -> Self {
        self.messages.retain(|m| m.role != Role::System);
        self.messages.insert(0, ChatMessage::system(content));
        self
    }

    /// Sets the most tokens to generate.
    pub fn with_max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Sets the temperature.
    pub fn with_temperature(mut self, t: f64) -> Self {
        self.temperature = Some(t);
        self
    }

    /// Sets top-p.
    pub fn with_top_p(mut self, p: f64) -> Self {
        self.top_p = Some(p);
        self
    }

    /// Adds a stop sequence.
    pub fn with_stop(mut self, stop: impl Into<String>) -> Self {
        self.stop.push(stop.into());
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The system message's text, when there is one.
    pub fn system(&self) -> Option<&str> {
        self.messages.iter().find(|m| m.role == Role::System).map(|m| m.content.as_str())
    }

    /// Refuses what no backend accepts: no message, a system message after
    /// the first, no user message, settings out of range, more than
    /// [`MAX_STOP_SEQUENCES`] or empty stop sequences.
    pub fn check(&self) -> Result<()> {
        let bad =
            |field: &str, message: String| Err(Error::invalid_at(Location::column(field), message));
        if self.messages.is_empty() {
            return bad("messages", "a chat request needs at least one message".into());
        }
        if let Some(i) = self.messages.iter().skip(1).position(|m| m.role == Role::System) {
            return bad(
                "messages",
                format!("message {} is a system message; only the first may be", i + 2),
            );
        }
        if !self.messages.iter().any(|m| m.role == Role::User) {
            return bad("messages", "a chat request needs a user message".into());
        }
        if self.max_tokens == Some(0) {
            return bad("max_tokens", "must be at least 1".into());
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return bad("temperature", format!("must be between 0 and 2, got {t}"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad("top_p", format!("must be in (0, 1], got {p}"));
        }
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return bad("stop", format!("at most {MAX_STOP_SEQUENCES} stop sequences"));
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop", "a stop sequence is empty".into());
        }
        Ok(())
    }
}

/// Why a model stopped answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FinishReason {
    /// It ended its turn, or reached a stop sequence.
    Stop,
    /// It reached `max_tokens` (or the model's context).
    Length,
    /// A content filter cut the answer.
    ContentFilter,
    /// A reason this crate does not know, as the backend named it.
    Other(String),
}

impl FinishReason {
    /// Maps the names backends use (`stop`, `length`, `end_turn`,
    /// `max_tokens`, `stop_sequence`, `content_filter`, `guardrail_intervened`, …).
    pub fn from_backend(name: &str) -> Self {
        match name {
            "stop" | "end_turn" | "stop_sequence" | "eos" => Self::Stop,
            "length" | "max_tokens" | "model_context_window_exceeded" => Self::Length,
            "content_filter" | "content_filtered" | "guardrail_intervened" => Self::ContentFilter,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stop => f.write_str("stop"),
            Self::Length => f.write_str("length"),
            Self::ContentFilter => f.write_str("content_filter"),
            Self::Other(name) => f.write_str(name),
        }
    }
}

/// Tokens a request used, as the backend counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt (the rendered conversation).
    pub prompt_tokens: u64,
    /// Tokens of the answer.
    pub completion_tokens: u64,
}

/// A chat model's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The answer's text (empty when the model said nothing).
    pub text: String,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Tokens used.
    pub usage: Usage,
    /// The model (or deployment) that answered, as the backend names it.
    pub model: String,
}

/// A model that answers chats: a fine-tuned model once ready (and deployed
/// where its platform requires), or any other.
///
/// Implementations are cheap to share (`Arc<dyn ChatModel>`); a model held
/// in memory is loaded once and serves every request.
#[async_trait]
pub trait ChatModel: Send + Sync + fmt::Debug {
    /// What requests go to: a model id, a deployment name or ARN, a folder.
    fn target(&self) -> &str;

    /// Answers `request` (after [`ChatRequest::check`]).
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        assert!(ChatRequest::user("hi").with_system("be brief").check().is_ok());
        let cases = [
            (ChatRequest::default(), "messages"),
            (ChatRequest::new([ChatMessage::system("s")]), "messages"),
            (ChatRequest::new([ChatMessage::user("a"), ChatMessage::system("s")]), "messages"),
            (ChatRequest::user("a").with_max_tokens(0), "max_tokens"),
            (ChatRequest::user("a").with_temperature(2.5), "temperature"),
            (ChatRequest::user("a").with_top_p(0.0), "top_p"),
            (ChatRequest::user("a").with_stop(""), "stop"),
        ];
        for (request, field) in cases {
            let err = request.check().unwrap_err();
            assert!(
                matches!(&err, Error::InvalidInput { location: Some(l), .. } if l.column.as_deref() == Some(field)),
                "{request:?}: {err}"
            );
        }
        let too_many = (0..5).fold(ChatRequest::user("a"), |r, i| r.with_stop(i.to_string()));
        assert!(too_many.check().is_err());
    }

    #[test]
    fn system_goes_first_once() {
        let r = ChatRequest::user("q").with_system("one").with_system("two");
        assert_eq!(r.messages, vec![ChatMessage::system("two"), ChatMessage::user("q")]);
        assert_eq!(r.system(), Some("two"));
    }

    #[test]
    fn roles_and_reasons_use_the_api_names() {
        let json = serde_json::to_string(&ChatMessage::assistant("x")).unwrap();
        assert_eq!(json, r#"{"role":"assistant","content":"x"}"#);
        assert_eq!(FinishReason::from_backend("end_turn"), FinishReason::Stop);
        assert_eq!(FinishReason::from_backend("max_tokens"), FinishReason::Length);
        assert_eq!(FinishReason::from_backend("tool_use"), FinishReason::Other("tool_use".into()));
    }
}
