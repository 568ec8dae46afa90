//! Examples to tokens: completion-only targets, the trained EOS, truncation,
//! and packing that gives exactly the unpacked loss.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use finetune_local::sft::{
    Example, IGNORE, PromptFormat, TokenizeOptions, TokenizeStats, TokenizedExample, Truncation,
    packed_batches, padded_batch, summed_loss, tokenize_example,
};
use finetune_local::tch::{self, Device};
use finetune_local::{CausalLm, ForwardInput, LoadOptions, Tokenizer};

fn dir(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name)
}

fn examples() -> Vec<Example> {
    let ex = |system: Option<&str>, prompt: &str, completion: &str| Example {
        system: system.map(str::to_owned),
        prompt: prompt.to_owned(),
        completion: completion.to_owned(),
    };
    vec![
        ex(None, "Spell backwards: lantern", "nretnal"),
        ex(Some("You answer in one word."), "Spell backwards: garden", "nedrag"),
        ex(None, "The quick brown fox", " jumps over the lazy dog."),
        ex(Some("Be brief."), "Rotary position embeddings rotate", " query and key vectors."),
    ]
}

fn options(format: PromptFormat) -> TokenizeOptions {
    TokenizeOptions { format, max_length: 256, truncation: Truncation::KeepStart }
}

#[test]
fn base_format_trains_only_the_completion_and_its_eos() {
    let tok = Tokenizer::from_dir(&dir("gpt2")).unwrap();
    let ex = &examples()[2];
    let mut stats = TokenizeStats::default();
    let t = tokenize_example(&tok, ex, &options(PromptFormat::Base), &mut stats).unwrap().unwrap();
    let prompt = tok.encode(&ex.prompt, true).unwrap();
    let completion = tok.encode(&ex.completion, false).unwrap();
    let eos = tok.eos_token_ids()[0];
    assert_eq!(t.input_ids, [prompt.clone(), completion.clone(), vec![eos]].concat());
    let p = prompt.len();
    // Positions before the last prompt token predict nothing; from there on
    // each position predicts the next completion token, ending with EOS.
    assert!(t.targets[..p - 1].iter().all(|&x| x == IGNORE));
    assert_eq!(&t.targets[p - 1..t.targets.len() - 1], &[completion, vec![eos]].concat()[..]);
    assert_eq!(*t.targets.last().unwrap(), IGNORE);
    assert_eq!(stats, TokenizeStats { kept: 1, ..Default::default() });
}

#[test]
fn chat_format_masks_the_rendered_prompt_and_trains_the_end_of_turn() {
    // The llama fixture has no pad token, so padding falls back to an EOS id:
    // the end of turn must still be trained.
    let tok = Tokenizer::from_dir(&dir("llama")).unwrap();
    let eot = tok.token_id("<|eot_id|>").unwrap();
    assert_eq!(tok.pad_token_id(), tok.eos_token_ids()[0]);
    let mut stats = TokenizeStats::default();
    for ex in examples() {
        let t =
            tokenize_example(&tok, &ex, &options(PromptFormat::Chat), &mut stats).unwrap().unwrap();
        let trained: Vec<i64> = t.targets.iter().copied().filter(|&x| x != IGNORE).collect();
        let completion_text = tok.decode(&trained, false).unwrap();
        assert_eq!(completion_text, format!("{}<|eot_id|>", ex.completion.trim()));
        assert_eq!(*trained.last().unwrap(), eot);
    }
    assert_eq!(stats.prefix_mismatches, 0);
    assert_eq!(stats.kept, 4);
}

#[test]
fn truncation_policies_and_fully_truncated_examples() {
    let tok = Tokenizer::from_dir(&dir("qwen2")).unwrap();
    let ex = &examples()[1];
    let mut stats = TokenizeStats::default();
    let full =
        tokenize_example(&tok, ex, &options(PromptFormat::Chat), &mut stats).unwrap().unwrap();
    let trained = full.trained_tokens();
    // Keeping the end keeps every completion token.
    let keep_end = TokenizeOptions {
        max_length: trained + 3,
        truncation: Truncation::KeepEnd,
        ..options(PromptFormat::Chat)
    };
    let t = tokenize_example(&tok, ex, &keep_end, &mut stats).unwrap().unwrap();
    assert_eq!(t.input_ids.len(), trained + 3);
    assert_eq!(t.trained_tokens(), trained);
    // Keeping the start of a sequence shorter than its prompt leaves nothing
    // to learn: skipped and counted, never a NaN loss.
    let keep_start = TokenizeOptions { max_length: 8, ..options(PromptFormat::Chat) };
    assert!(tokenize_example(&tok, ex, &keep_start, &mut stats).unwrap().is_none());
    assert_eq!(
        stats,
        TokenizeStats { kept: 2, truncated: 2, skipped_fully_truncated: 1, prefix_mismatches: 0 }
    );
}

fn loss_of(model: &CausalLm, batch: &finetune_local::sft::Batch) -> f64 {
    let input = ForwardInput {
        input_ids: &batch.input_ids,
        position_ids: Some(&batch.position_ids),
        attention_mask: batch.attention_mask.as_ref(),
        sequence_ids: batch.sequence_ids.as_ref(),
    };
    let logits = tch::no_grad(|| model.forward(&input, None)).unwrap();
    f64::try_from(summed_loss(&logits, &batch.targets).unwrap()).unwrap()
}

#[test]
fn packed_loss_equals_unpacked_loss() {
    for name in ["llama", "mistral", "qwen3", "gpt2"] {
        let model = CausalLm::load(&dir(name), &LoadOptions::default()).unwrap();
        let tok = Tokenizer::from_dir(&dir(name)).unwrap();
        let mut stats = TokenizeStats::default();
        let tokenized: Vec<TokenizedExample> = examples()
            .iter()
            .map(|e| {
                tokenize_example(&tok, e, &options(PromptFormat::Chat), &mut stats)
                    .unwrap()
                    .unwrap()
            })
            .collect();
        let refs: Vec<&TokenizedExample> = tokenized.iter().collect();
        let total: usize = refs.iter().map(|e| e.input_ids.len()).sum();

        let padded = padded_batch(&refs, tok.pad_token_id(), Device::Cpu).unwrap();
        let unpacked = loss_of(&model, &padded);
        // Rows wide enough for two examples each: several examples share a row.
        let packed = packed_batches(&refs, total / 2 + 8, tok.pad_token_id(), Device::Cpu).unwrap();
        assert!(packed.len() < refs.len(), "{name}: nothing was packed");
        let packed_loss: f64 = packed.iter().map(|b| loss_of(&model, b)).sum();
        let trained: i64 = packed.iter().map(|b| b.trained_tokens).sum();
        assert_eq!(trained, padded.trained_tokens);
        let (a, b) = (unpacked / trained as f64, packed_loss / trained as f64);
        println!("{name}: mean loss unpacked {a:.7}, packed {b:.7}");
        assert!(a.is_finite() && (a - b).abs() < 1e-5, "{name}: {a} vs {b}");
    }
}

#[test]
fn pack_rows_uses_few_balanced_rows_and_keeps_every_example() {
    let ex =
        |n: usize, tag: i64| TokenizedExample { input_ids: vec![tag; n], targets: vec![IGNORE; n] };
    let examples: Vec<TokenizedExample> = [300, 20, 180, 250, 90, 60, 400, 10]
        .iter()
        .enumerate()
        .map(|(i, &n)| ex(n, i as i64))
        .collect();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    let rows = finetune_local::sft::pack_rows(&refs, 512).unwrap();
    let fills: Vec<usize> =
        rows.iter().map(|r| r.iter().map(|e| e.input_ids.len()).sum()).collect();
    // 1310 tokens need at least 3 rows of 512; balanced, the widest is far
    // below 512 (first fit in this order would fill a row to 500).
    assert_eq!(rows.len(), 3, "{fills:?}");
    assert!(fills.iter().all(|&f| f <= 512));
    assert!(fills.iter().max().unwrap() - fills.iter().min().unwrap() <= 60, "{fills:?}");
    let mut tags: Vec<i64> = rows.iter().flatten().map(|e| e.input_ids[0]).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..8).collect::<Vec<_>>());
    assert!(finetune_local::sft::pack_rows(&refs, 399).is_err());
}

#[test]
fn validation_counts_what_a_run_trains_and_reports_what_it_cuts() {
    use finetune_data::{DatasetRole, ProblemKind, Severity, ValidationOptions, Validator};
    use finetune_local::sft::TemplateTokens;

    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("train.jsonl");
    let line = |p: &str, c: &str| serde_json::json!({"prompt": p, "completion": c}).to_string();
    let long = "word ".repeat(60);
    let text =
        [line("Hi", "Hello"), line(&long, "Short answer"), line("Hi", "Hello again")].join("\n");
    std::fs::write(&path, text).unwrap();
    let source = finetune_core::DatasetSource::new(path.to_str().unwrap()).unwrap();
    let dataset = finetune_data::LocalDataset::local(&source).unwrap();
    let rules = finetune_core::DataRules::builtin(&finetune_core::ProviderKind::LocalHf, "llama");
    let run = |truncation: Truncation| {
        let counter = TemplateTokens::for_model(&dir("llama"), 48, truncation).unwrap();
        let validator = Validator::new("train.jsonl", ValidationOptions::default())
            .with_token_counter(Box::new(counter))
            .with_rules(rules.clone(), DatasetRole::Training);
        finetune_data::validate_with(&dataset, validator).unwrap().finish()
    };
    // The counts are the run's: the whole rendered conversation.
    let tok = Tokenizer::from_dir(&dir("llama")).unwrap();
    let unlimited = TokenizeOptions {
        format: PromptFormat::Chat,
        max_length: 4096,
        truncation: Truncation::KeepEnd,
    };
    let lengths: Vec<u64> =
        [("Hi", "Hello"), (long.as_str(), "Short answer"), ("Hi", "Hello again")]
            .iter()
            .map(|(p, c)| {
                let ex = Example { system: None, prompt: (*p).into(), completion: (*c).into() };
                let t =
                    tokenize_example(&tok, &ex, &unlimited, &mut TokenizeStats::default()).unwrap();
                t.unwrap().input_ids.len() as u64
            })
            .collect();
    assert!(lengths[0] <= 48 && lengths[1] > 48, "{lengths:?}");

    // Keeping the end: the prompt's start is cut, the example still trains.
    let (report, stats) = run(Truncation::KeepEnd);
    assert!(report.valid, "{report}");
    let cut: Vec<_> = report.problems(ProblemKind::Truncated).collect();
    assert_eq!(cut.len(), 1, "{report}");
    assert_eq!((cut[0].row, cut[0].severity), (Some(2), Severity::Warning));
    let tokens = stats.tokens.unwrap();
    assert_eq!(tokens.per_row.total, lengths.iter().sum::<u64>());
    assert_eq!((tokens.truncated_rows, tokens.cut_tokens), (1, lengths[1] - 48));

    // Keeping the start: the completion is cut away entirely, an error.
    let (report, _) = run(Truncation::KeepStart);
    assert!(!report.valid);
    let p = report.problems(ProblemKind::TooLong).next().unwrap();
    assert_eq!((p.row, p.column.as_deref()), (Some(2), Some("completion")));
    assert!(p.message.contains("no completion token"), "{}", p.message);
}
