//! The tokenizer of a model directory: `tokenizer.json` through the
//! `tokenizers` crate, plus what `tokenizer_config.json`,
//! `chat_template.jinja`, `generation_config.json` and `config.json` say
//! about special tokens, the chat template and the end of generation.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::chat::{ChatMessage, ChatTemplate, SpecialTokens, plain_chat_format};
use crate::error::{LocalError, Result};

/// A model's tokenizer with its special tokens and chat template.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    add_bos_token: Option<bool>,
    chat_template: Option<ChatTemplate>,
    eos_token_ids: Vec<i64>,
    path: PathBuf,
}

impl Tokenizer {
    /// Loads the tokenizer files of a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| LocalError::Tokenizer {
            path: Some(path.clone()),
            message: if path.is_file() { e.to_string() } else { "file is missing".into() },
        })?;

        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_if_exists(&config_path)?;
        let token = |key: &str| -> Result<Option<String>> {
            match config.as_ref().and_then(|c| c.get(key)) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                // An AddedToken: {"content": "<s>", "lstrip": false, …}.
                Some(Value::Object(o)) => match o.get("content") {
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    _ => Err(LocalError::invalid(&config_path, Some(key), "has no `content`")),
                },
                Some(_) => Err(LocalError::invalid(&config_path, Some(key), "is not a token")),
            }
        };
        let special = SpecialTokens {
            bos_token: token("bos_token")?,
            eos_token: token("eos_token")?,
            pad_token: token("pad_token")?,
            unk_token: token("unk_token")?,
        };
        let add_bos_token =
            config.as_ref().and_then(|c| c.get("add_bos_token")).and_then(Value::as_bool);

        // transformers ≥ 4.47 saves the template beside the config; older
        // checkpoints keep it in tokenizer_config.json, as a string or as a
        // list of named templates.
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(|e| LocalError::io(&jinja, e))?)
        } else {
            match config.as_ref().and_then(|c| c.get("chat_template")) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                Some(_) => {
                    return Err(LocalError::invalid(
                        &config_path,
                        Some("chat_template"),
                        "is not a string",
                    ));
                }
            }
        };
        let chat_template = source.map(ChatTemplate::new).transpose()?;

        // End of generation: generation_config.json, else config.json, else
        // the tokenizer's eos token.
        let mut eos_token_ids = Vec::new();
        for file in ["generation_config.json", "config.json"] {
            let p = dir.join(file);
            if let Some(v) = read_json_if_exists(&p)? {
                eos_token_ids =
                    crate::config::token_ids(v.get("eos_token_id")).ok_or_else(|| {
                        LocalError::invalid(&p, Some("eos_token_id"), "is not a token id or a list")
                    })?;
                if !eos_token_ids.is_empty() {
                    break;
                }
            }
        }
        let mut this = Self { inner, special, add_bos_token, chat_template, eos_token_ids, path };
        if this.eos_token_ids.is_empty()
            && let Some(id) = this.special.eos_token.as_deref().and_then(|t| this.token_id(t))
        {
            this.eos_token_ids.push(id);
        }
        Ok(this)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The special tokens from `tokenizer_config.json`.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// The chat template, when the tokenizer has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Token ids that end generation.
    pub fn eos_token_ids(&self) -> &[i64] {
        &self.eos_token_ids
    }

    /// The id to pad with: the pad token, else the first eos id, else 0.
    pub fn pad_token_id(&self) -> i64 {
        self.special
            .pad_token
            .as_deref()
            .and_then(|t| self.token_id(t))
            .or_else(|| self.eos_token_ids.first().copied())
            .unwrap_or(0)
    }

    /// The id of a token, when it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// Tokenizes `text`. With `add_special_tokens` the tokenizer's own
    /// rules apply (e.g. a BOS in front for Llama), as with transformers'
    /// `tokenizer(text)`; chat-template output is encoded without them
    /// because the template writes its own.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| LocalError::Tokenizer { path: None, message: e.to_string() })?;
        let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        if add_special_tokens
            && let Some(add_bos) = self.add_bos_token
            && let Some(bos) = self.special.bos_token.as_deref().and_then(|t| self.token_id(t))
        {
            let has_bos = ids.first() == Some(&bos);
            if add_bos && !has_bos {
                ids.insert(0, bos);
            } else if !add_bos
                && has_bos
                && !text.starts_with(self.special.bos_token.as_deref().unwrap_or(""))
            {
                ids.remove(0);
            }
        }
        Ok(ids)
    }

    /// Turns ids back into text.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| u32::try_from(i).unwrap_or(u32::MAX)).collect();
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| LocalError::Tokenizer { path: None, message: e.to_string() })
    }

    /// Renders a conversation with the chat template, or with
    /// [`plain_chat_format`] when the tokenizer has none.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        match &self.chat_template {
            Some(t) => t.render(messages, add_generation_prompt, &self.special),
            None => Ok(plain_chat_format(messages, add_generation_prompt)),
        }
    }

    /// Where `tokenizer.json` was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_json_if_exists(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            LocalError::invalid(path, None, format!("line {} column {}: {e}", e.line(), e.column()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LocalError::io(path, e)),
    }
}
