//! Token counters: OpenAI's byte-pair encodings (`o200k_base` for the
//! gpt-4o, gpt-4.1 and o-series models, `cl100k_base` for older ones), with
//! the ranks compiled in (no download), counting an example as OpenAI bills
//! it; and a counter for whatever [`DataRules`] name.

use std::sync::Arc;

use finetune_core::DataRules;
use finetune_core::rules::BillingTokenizer;
use tiktoken_rs::CoreBPE;

use crate::stats::{CharsPerToken, ExampleTokens, TokenCounter};

/// Which of OpenAI's encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAiEncoding {
    /// `o200k_base`.
    O200kBase,
    /// `cl100k_base`.
    Cl100kBase,
}

/// Counts tokens with one of OpenAI's encodings. An example is a chat:
/// the system message (when there is one), the user's prompt and the
/// assistant's completion, each message costing 3 tokens plus its role and
/// content, and 3 more for the conversation (OpenAI's cookbook, "Data
/// preparation and analysis for chat model fine-tuning").
#[derive(Clone)]
pub struct OpenAiTokens {
    encoding: OpenAiEncoding,
    bpe: &'static CoreBPE,
}

impl std::fmt::Debug for OpenAiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiTokens").field("encoding", &self.encoding).finish()
    }
}

/// Tokens per message beyond its content, and per conversation.
const PER_MESSAGE: usize = 3;
const PER_CONVERSATION: usize = 3;

impl OpenAiTokens {
    /// A counter for `encoding` (its ranks are parsed once per process, on
    /// first use).
    pub fn new(encoding: OpenAiEncoding) -> Self {
        let bpe = match encoding {
            OpenAiEncoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            OpenAiEncoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        };
        Self { encoding, bpe }
    }

    /// The encoding.
    pub fn encoding(&self) -> OpenAiEncoding {
        self.encoding
    }

    /// The token ids of `text`, special tokens read as text.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }
}

impl TokenCounter for OpenAiTokens {
    fn count(&self, text: &str) -> usize {
        self.bpe.encode_ordinary(text).len()
    }

    fn example(&self, system: Option<&str>, prompt: &str, completion: &str) -> ExampleTokens {
        let message =
            |role: &str, content: &str| PER_MESSAGE + self.count(role) + self.count(content);
        let total = system.map_or(0, |s| message("system", s))
            + message("user", prompt)
            + message("assistant", completion)
            + PER_CONVERSATION;
        ExampleTokens::whole(total as u64)
    }
}

/// The counter `rules` bill with: OpenAI's encodings where they apply, an
/// estimate of characters per token otherwise. `None` for
/// [`BillingTokenizer::Model`]: the model's own tokenizer is the provider's
/// to give ([`finetune_core::FineTuneProvider::token_counter`]).
pub fn counter_for(rules: &DataRules) -> Option<Arc<dyn TokenCounter>> {
    match rules.tokenizer {
        BillingTokenizer::O200kBase => Some(Arc::new(OpenAiTokens::new(OpenAiEncoding::O200kBase))),
        BillingTokenizer::Cl100kBase => {
            Some(Arc::new(OpenAiTokens::new(OpenAiEncoding::Cl100kBase)))
        }
        BillingTokenizer::CharsPerToken(n) => Some(Arc::new(CharsPerToken(n))),
        BillingTokenizer::Model => None,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_example_costs_its_messages_and_their_overhead() {
        let t = OpenAiTokens::new(OpenAiEncoding::O200kBase);
        let (s, p, c) = ("Be brief.", "Hello there", "Hi!");
        let sum = t.count(s) + t.count(p) + t.count(c);
        // Three messages of 3 + 1 (the role) each, and 3 for the chat.
        assert_eq!(t.example(Some(s), p, c).total as usize, sum + 3 * 4 + 3);
        assert_eq!(t.example(None, p, c).total as usize, t.count(p) + t.count(c) + 2 * 4 + 3);
        assert_eq!(t.count(""), 0);
        // Special tokens in text are text.
        assert!(t.count("<|endoftext|>") > 1);
    }
}
