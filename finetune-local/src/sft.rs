//! Supervised fine-tuning data: examples to tokens with completion-only
//! targets, truncation, padded and packed batches, and the loss.
//!
//! Targets are stored already shifted: `targets[i]` is the token the model
//! must predict after reading `input_ids[..=i]`, or [`IGNORE`] where no loss
//! is taken (prompt tokens, the last position, padding). Because the shift
//! happens inside each example, packing several examples into one row never
//! asks a token to predict the next example's first token, and the loss of a
//! packed batch equals the loss of the same examples unpacked.

use tch::{Device, Kind, Tensor};

use crate::chat::ChatMessage;
use crate::error::{LocalError, Result};
use crate::tokenizer::Tokenizer;

/// The target of positions that take no loss (as `ignore_index` in PyTorch).
pub const IGNORE: i64 = -100;

/// One training example, as the dataset schema defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The optional system message.
    pub system: Option<String>,
    /// The prompt (the user turn).
    pub prompt: String,
    /// The completion the model learns to write.
    pub completion: String,
}

/// How an example becomes text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptFormat {
    /// Through the tokenizer's chat template (or the plain fallback format):
    /// system message when present, user = prompt, assistant = completion.
    Chat,
    /// For base models: the prompt (with the tokenizer's special tokens),
    /// then the completion, then EOS.
    Base,
}

/// What to cut when an example is longer than the maximum length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// Cut the end of the sequence (the completion's tail first).
    KeepStart,
    /// Cut the start of the prompt, keeping the completion whole when it fits.
    KeepEnd,
}

/// How to tokenize examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizeOptions {
    /// Text format.
    pub format: PromptFormat,
    /// Longest sequence, in tokens.
    pub max_length: usize,
    /// Which side to cut.
    pub truncation: Truncation,
}

/// A tokenized example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// Shifted targets, [`IGNORE`] where no loss is taken.
    pub targets: Vec<i64>,
}

impl TokenizedExample {
    /// Tokens that take a loss.
    pub fn trained_tokens(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
    }
}

/// What tokenizing a dataset did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenizeStats {
    /// Examples kept.
    pub kept: usize,
    /// Examples cut to the maximum length (and kept).
    pub truncated: usize,
    /// Examples dropped because no completion token survived truncation.
    pub skipped_fully_truncated: usize,
    /// Examples whose rendered prompt was not a token prefix of the full
    /// conversation (the template or tokenizer merges across the boundary);
    /// their loss starts at the first differing token.
    pub prefix_mismatches: usize,
}

/// Turns an example into ids and completion-only targets. Returns `None`
/// (and counts it) when truncation leaves no completion token to learn.
pub fn tokenize_example(
    tokenizer: &Tokenizer,
    example: &Example,
    options: &TokenizeOptions,
    stats: &mut TokenizeStats,
) -> Result<Option<TokenizedExample>> {
    if options.max_length < 2 {
        return Err(LocalError::InvalidArgument("max_length must be at least 2".into()));
    }
    let (mut ids, mut prompt_len) = match options.format {
        PromptFormat::Chat => {
            let mut messages = Vec::with_capacity(3);
            if let Some(system) = &example.system {
                messages.push(ChatMessage::system(system.clone()));
            }
            messages.push(ChatMessage::user(example.prompt.clone()));
            let prompt_text = tokenizer.apply_chat_template(&messages, true)?;
            messages.push(ChatMessage::assistant(example.completion.clone()));
            let full_text = tokenizer.apply_chat_template(&messages, false)?;
            let prompt = tokenizer.encode(&prompt_text, false)?;
            let full = tokenizer.encode(&full_text, false)?;
            let common = prompt.iter().zip(&full).take_while(|(a, b)| a == b).count();
            if common < prompt.len() {
                stats.prefix_mismatches += 1;
                tracing::warn!(
                    "the chat template's prompt is not a token prefix of the full conversation \
                     (differs at token {common} of {}); the loss starts there",
                    prompt.len()
                );
            }
            (full, common)
        }
        PromptFormat::Base => {
            let mut ids = tokenizer.encode(&example.prompt, true)?;
            let prompt_len = ids.len();
            ids.extend(tokenizer.encode(&example.completion, false)?);
            if let Some(&eos) = tokenizer.eos_token_ids().first() {
                ids.push(eos);
            }
            (ids, prompt_len)
        }
    };
    if ids.len() > options.max_length {
        stats.truncated += 1;
        match options.truncation {
            Truncation::KeepStart => ids.truncate(options.max_length),
            Truncation::KeepEnd => {
                let cut = ids.len() - options.max_length;
                ids.drain(..cut);
                prompt_len = prompt_len.saturating_sub(cut);
            }
        }
    }
    // Position i predicts token i + 1; completion tokens start at prompt_len.
    let targets: Vec<i64> = (0..ids.len())
        .map(|i| if i + 1 < ids.len() && i + 1 >= prompt_len.max(1) { ids[i + 1] } else { IGNORE })
        .collect();
    let example = TokenizedExample { input_ids: ids, targets };
    if example.trained_tokens() == 0 {
        stats.skipped_fully_truncated += 1;
        return Ok(None);
    }
    stats.kept += 1;
    Ok(Some(example))
}

/// A batch ready for the model.
#[derive(Debug)]
pub struct Batch {
    /// `[rows, len]` ids.
    pub input_ids: Tensor,
    /// `[rows, len]` shifted targets.
    pub targets: Tensor,
    /// `[rows, len]` positions (restarting per example when packed).
    pub position_ids: Tensor,
    /// `[rows, len]` example index within the row (packed), else `None`.
    pub sequence_ids: Option<Tensor>,
    /// `[rows, len]` 1 for real tokens, 0 for padding (padded mode).
    pub attention_mask: Option<Tensor>,
    /// Tokens that take a loss.
    pub trained_tokens: i64,
    /// Real (non-padding) tokens.
    pub real_tokens: i64,
}

/// One example per row, right-padded to the longest.
pub fn padded_batch(
    examples: &[&TokenizedExample],
    pad_token_id: i64,
    device: Device,
) -> Result<Batch> {
    let rows: Vec<Vec<&TokenizedExample>> = examples.iter().map(|e| vec![*e]).collect();
    build(&rows, pad_token_id, device, false)
}

/// Several examples per row, each attending only to itself, positions
/// restarting at 0; rows hold at most `max_length` tokens (see
/// [`pack_rows`] for the layout).
pub fn packed_batches(
    examples: &[&TokenizedExample],
    max_length: usize,
    pad_token_id: i64,
    device: Device,
) -> Result<Vec<Batch>> {
    let rows = pack_rows(examples, max_length)?;
    rows.iter().map(|row| build(std::slice::from_ref(row), pad_token_id, device, true)).collect()
}

/// Rows of packed examples (from [`pack_rows`]) as one batch: each row's
/// examples side by side, rows right-padded to the longest.
pub fn packed_batch(
    rows: &[Vec<&TokenizedExample>],
    pad_token_id: i64,
    device: Device,
) -> Result<Batch> {
    build(rows, pad_token_id, device, true)
}

/// Groups examples into as few rows of at most `max_length` tokens as it
/// can, with the rows' fills balanced: longest example first, each into the
/// least-filled row (more rows only when one does not fit). Rows padded to
/// the longest of them then waste little. Deterministic for a given input.
pub fn pack_rows<'a>(
    examples: &[&'a TokenizedExample],
    max_length: usize,
) -> Result<Vec<Vec<&'a TokenizedExample>>> {
    if let Some(e) = examples.iter().find(|e| e.input_ids.len() > max_length) {
        return Err(LocalError::InvalidArgument(format!(
            "an example of {} tokens does not fit rows of {max_length}",
            e.input_ids.len()
        )));
    }
    let total: usize = examples.iter().map(|e| e.input_ids.len()).sum();
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(examples[i].input_ids.len()));
    let mut count = total.div_ceil(max_length.max(1)).max(1);
    loop {
        let mut rows: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); count];
        let placed = order.iter().all(|&i| {
            let len = examples[i].input_ids.len();
            let Some(row) = rows.iter_mut().min_by_key(|(used, _)| *used) else {
                return false;
            };
            if row.0 + len > max_length {
                return false;
            }
            row.0 += len;
            row.1.push(i);
            true
        });
        if placed {
            return Ok(rows
                .into_iter()
                .filter(|(used, _)| *used > 0)
                .map(|(_, mut row)| {
                    row.sort_unstable();
                    row.into_iter().map(|i| examples[i]).collect()
                })
                .collect());
        }
        count += 1;
    }
}

/// Builds tensors from rows of examples; `packed` puts a whole row's
/// examples side by side.
fn build(rows: &[Vec<&TokenizedExample>], pad: i64, device: Device, packed: bool) -> Result<Batch> {
    let width =
        rows.iter().map(|r| r.iter().map(|e| e.input_ids.len()).sum::<usize>()).max().unwrap_or(0);
    if width == 0 {
        return Err(LocalError::InvalidArgument("an empty batch".into()));
    }
    let n = rows.len() * width;
    let (mut ids, mut targets, mut pos, mut seq, mut mask) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut real = 0i64;
    for row in rows {
        let mut used = 0;
        for (k, e) in row.iter().enumerate() {
            ids.extend_from_slice(&e.input_ids);
            targets.extend_from_slice(&e.targets);
            pos.extend(0..e.input_ids.len() as i64);
            seq.extend(std::iter::repeat_n(k as i64, e.input_ids.len()));
            mask.extend(std::iter::repeat_n(1i64, e.input_ids.len()));
            used += e.input_ids.len();
        }
        real += used as i64;
        let rest = width - used;
        ids.extend(std::iter::repeat_n(pad, rest));
        targets.extend(std::iter::repeat_n(IGNORE, rest));
        pos.extend(std::iter::repeat_n(0i64, rest));
        // Padding gets its own sequence id, so it attends only to itself.
        seq.extend(std::iter::repeat_n(row.len() as i64, rest));
        mask.extend(std::iter::repeat_n(0i64, rest));
    }
    let shape = [rows.len() as i64, width as i64];
    let t = |v: &[i64]| -> Result<Tensor> {
        Ok(Tensor::from_slice(v).f_view(shape)?.f_to_device(device)?)
    };
    let trained_tokens = targets.iter().filter(|&&x| x != IGNORE).count() as i64;
    Ok(Batch {
        input_ids: t(&ids)?,
        targets: t(&targets)?,
        position_ids: t(&pos)?,
        sequence_ids: if packed { Some(t(&seq)?) } else { None },
        attention_mask: if packed { None } else { Some(t(&mask)?) },
        trained_tokens,
        real_tokens: real,
    })
}

/// Summed cross-entropy over the positions whose target is not
/// [`IGNORE`], computed in fp32. Divide by the trained-token count of the
/// whole accumulation window to get the mean.
pub fn summed_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let vocab = logits.size().last().copied().unwrap_or(0);
    let flat = logits.f_reshape([-1, vocab])?.f_to_kind(Kind::Float)?;
    let targets = targets.f_reshape([-1])?;
    Ok(flat.f_cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::Sum, IGNORE, 0.0)?)
}

/// Tokenizes every example, dropping (and counting) those with nothing
/// left to learn.
pub fn tokenize_all(
    tokenizer: &Tokenizer,
    examples: &[Example],
    options: &TokenizeOptions,
) -> Result<(Vec<TokenizedExample>, TokenizeStats)> {
    let mut stats = TokenizeStats::default();
    let mut out = Vec::with_capacity(examples.len());
    for example in examples {
        if let Some(t) = tokenize_example(tokenizer, example, options, &mut stats)? {
            out.push(t);
        }
    }
    Ok((out, stats))
}

/// Counts an example's tokens as a local run trains on it: the model's
/// tokenizer over the rendered chat template (or the base format), with the
/// max length and truncation side of the run, so the validator reports the
/// examples the run would cut ([`finetune_core::ExampleTokens::cut`]) and
/// those it would skip for want of a completion token.
#[derive(Debug)]
pub struct TemplateTokens {
    tokenizer: Tokenizer,
    options: TokenizeOptions,
}

impl TemplateTokens {
    /// A counter for `tokenizer` under `options`.
    pub fn new(tokenizer: Tokenizer, options: TokenizeOptions) -> Self {
        Self { tokenizer, options }
    }

    /// The counter a run of the model in `dir` would use: the chat template
    /// when it has one, else the base format.
    pub fn for_model(
        dir: &std::path::Path,
        max_length: usize,
        truncation: Truncation,
    ) -> Result<Self> {
        let tokenizer = Tokenizer::from_dir(dir)?;
        let format = if tokenizer.chat_template().is_some() {
            PromptFormat::Chat
        } else {
            PromptFormat::Base
        };
        Ok(Self::new(tokenizer, TokenizeOptions { format, max_length, truncation }))
    }

    fn tokenize(&self, example: &Example, max_length: usize) -> Result<Option<TokenizedExample>> {
        let options = TokenizeOptions { max_length, ..self.options };
        tokenize_example(&self.tokenizer, example, &options, &mut TokenizeStats::default())
    }
}

impl finetune_core::TokenCounter for TemplateTokens {
    fn count(&self, text: &str) -> usize {
        self.tokenizer.encode(text, false).map_or(0, |ids| ids.len())
    }

    fn example(
        &self,
        system: Option<&str>,
        prompt: &str,
        completion: &str,
    ) -> finetune_core::ExampleTokens {
        let example = Example {
            system: system.map(str::to_owned),
            prompt: prompt.to_owned(),
            completion: completion.to_owned(),
        };
        // Untruncated first: the example's whole length.
        let total = match self.tokenize(&example, usize::MAX) {
            Ok(Some(t)) => t.input_ids.len() as u64,
            Ok(None) => 0,
            Err(e) => {
                tracing::warn!("counting an example's tokens: {e}");
                return finetune_core::ExampleTokens::whole(0);
            }
        };
        let max = self.options.max_length as u64;
        if total <= max {
            return finetune_core::ExampleTokens::whole(total);
        }
        let nothing_left = !matches!(self.tokenize(&example, self.options.max_length), Ok(Some(_)));
        finetune_core::ExampleTokens { total, cut: total - max, nothing_left }
    }
}
