//! Parity with transformers: the fixtures under tests/fixtures were written
//! by `make_fixtures.py` (transformers 5.24.0, torch 2.11.0); these tests
//! need no Python.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use finetune_local::generate::{FinishReason, GenerationOptions, generate};
use finetune_local::tch::{self, Kind, Tensor};
use finetune_local::{CausalLm, ForwardInput, LoadOptions, Tokenizer};
use serde::Deserialize;

const MODELS: &[&str] = &["llama", "llama_tied_bf16", "mistral", "qwen2", "qwen3", "gpt2"];

#[derive(Deserialize)]
struct Reference {
    max_new_tokens: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    input_ids: Vec<i64>,
    greedy: Vec<i64>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(name: &str) -> (CausalLm, Tokenizer, Reference, Vec<(String, Tensor)>) {
    let dir = fixtures().join("models").join(name);
    let model = CausalLm::load(&dir, &LoadOptions::default()).unwrap();
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let refs = fixtures().join("references");
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(refs.join(format!("{name}.json"))).unwrap())
            .unwrap();
    let logits = Tensor::read_safetensors(refs.join(format!("{name}.safetensors"))).unwrap();
    (model, tokenizer, reference, logits)
}

fn ids(v: &[i64]) -> Tensor {
    Tensor::from_slice(v).view([1, -1])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from((a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max()).unwrap()
}

fn greedy_options(tokenizer: &Tokenizer, max_new_tokens: usize) -> GenerationOptions {
    GenerationOptions {
        max_new_tokens,
        eos_token_ids: tokenizer.eos_token_ids().to_vec(),
        pad_token_id: tokenizer.pad_token_id(),
        ..Default::default()
    }
}

#[test]
fn tokenizer_matches_transformers() {
    for name in MODELS {
        let (_, tokenizer, reference, _) = load(name);
        for case in &reference.cases {
            assert_eq!(
                tokenizer.encode(&case.text, true).unwrap(),
                case.input_ids,
                "{name}: {}",
                case.text
            );
            let text = tokenizer.decode(&case.input_ids, true).unwrap();
            assert_eq!(text, case.text, "{name}: decode");
        }
    }
}

#[test]
fn full_sequence_logits_match_transformers() {
    for name in MODELS {
        let (model, _, reference, logits) = load(name);
        for (i, case) in reference.cases.iter().enumerate() {
            let expected = &logits.iter().find(|(k, _)| *k == format!("logits_{i}")).unwrap().1;
            let got =
                tch::no_grad(|| model.forward(&ForwardInput::new(&ids(&case.input_ids)), None))
                    .unwrap();
            let diff = max_abs_diff(&got.squeeze_dim(0), expected);
            println!("{name} case {i}: {} tokens, max |Δlogit| = {diff:.2e}", case.input_ids.len());
            assert!(diff < 1e-4, "{name} case {i}: max |Δlogit| = {diff:e}");
        }
    }
}

#[test]
fn greedy_generation_reproduces_transformers_tokens() {
    for name in MODELS {
        let (model, tokenizer, reference, _) = load(name);
        for case in &reference.cases {
            let options = greedy_options(&tokenizer, reference.max_new_tokens);
            let out = generate(&model, std::slice::from_ref(&case.input_ids), &options).unwrap();
            assert_eq!(out[0].tokens, case.greedy, "{name}: {}", case.text);
            let eos_hit = case.greedy.last().is_some_and(|t| tokenizer.eos_token_ids().contains(t));
            let expected = if eos_hit { FinishReason::Eos } else { FinishReason::Length };
            assert_eq!(out[0].finish_reason, expected);
        }
    }
}

#[test]
fn cached_and_uncached_forward_agree() {
    for name in MODELS {
        let (model, _, reference, _) = load(name);
        let tokens = &reference.cases[2].input_ids;
        let full = tch::no_grad(|| model.forward(&ForwardInput::new(&ids(tokens)), None)).unwrap();
        // A prefill of 5 tokens, one chunk of 3, then one token at a time.
        let mut cache = model.new_cache();
        let mut pieces = Vec::new();
        let mut start = 0;
        for len in std::iter::once(5).chain(std::iter::once(3)).chain(std::iter::repeat(1)) {
            if start >= tokens.len() {
                break;
            }
            let end = (start + len).min(tokens.len());
            let out = tch::no_grad(|| {
                model.forward(&ForwardInput::new(&ids(&tokens[start..end])), Some(&mut cache))
            })
            .unwrap();
            pieces.push(out);
            start = end;
        }
        assert_eq!(cache.len(), tokens.len() as i64);
        let stitched = Tensor::cat(&pieces, 1);
        let diff = max_abs_diff(&stitched, &full);
        assert!(diff < 1e-4, "{name}: cached vs uncached max |Δ| = {diff:e}");
    }
}

#[test]
fn batched_left_padded_generation_equals_one_by_one() {
    for name in MODELS {
        let (model, tokenizer, reference, _) = load(name);
        let prompts: Vec<Vec<i64>> = reference.cases.iter().map(|c| c.input_ids.clone()).collect();
        assert!(prompts.iter().map(Vec::len).min() != prompts.iter().map(Vec::len).max());
        let options = greedy_options(&tokenizer, 10);
        let batched = generate(&model, &prompts, &options).unwrap();
        for (prompt, got) in prompts.iter().zip(&batched) {
            let alone = generate(&model, std::slice::from_ref(prompt), &options).unwrap();
            assert_eq!(got, &alone[0], "{name}");
        }
    }
}

#[test]
fn packed_rows_equal_separate_sequences() {
    // Two examples in one row, positions restarting at 0, attention kept
    // within each example: the logits equal those of each example alone.
    for name in MODELS {
        let (model, _, reference, _) = load(name);
        let a = &reference.cases[0].input_ids;
        let b = &reference.cases[1].input_ids;
        let packed: Vec<i64> = a.iter().chain(b).copied().collect();
        let positions: Vec<i64> = (0..a.len() as i64).chain(0..b.len() as i64).collect();
        let seq: Vec<i64> =
            std::iter::repeat_n(0, a.len()).chain(std::iter::repeat_n(1, b.len())).collect();
        let (pos, seq) = (ids(&positions), ids(&seq));
        let input = ForwardInput {
            input_ids: &ids(&packed),
            position_ids: Some(&pos),
            attention_mask: None,
            sequence_ids: Some(&seq),
        };
        let got = tch::no_grad(|| model.forward(&input, None)).unwrap();
        let alone_a = tch::no_grad(|| model.forward(&ForwardInput::new(&ids(a)), None)).unwrap();
        let alone_b = tch::no_grad(|| model.forward(&ForwardInput::new(&ids(b)), None)).unwrap();
        let separate = Tensor::cat(&[alone_a, alone_b], 1);
        let diff = max_abs_diff(&got, &separate);
        assert!(diff < 1e-4, "{name}: packed vs separate max |Δ| = {diff:e}");
    }
}

/// On CUDA in bf16, packed rows go through libtorch's variable-length
/// flash attention: the logits equal each example's alone to bf16's
/// precision. Without a CUDA device there is nothing to run (the CPU path
/// is `packed_rows_equal_separate_sequences`); `scripts/gpu-check` runs
/// this binary on a GPU.
#[test]
fn packed_rows_on_cuda_use_variable_length_flash_attention() {
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device: variable-length flash attention not exercised");
        return;
    }
    let device = tch::Device::Cuda(0);
    let dir = fixtures().join("models").join("llama");
    let options = LoadOptions { device, dtype: Some(Kind::BFloat16) };
    let model = CausalLm::load(&dir, &options).unwrap();
    let on = |v: &[i64]| ids(v).to_device(device);
    let (a, b): (Vec<i64>, Vec<i64>) = ((3..40).collect(), (50..71).collect());
    let packed: Vec<i64> = a.iter().chain(&b).copied().collect();
    let positions: Vec<i64> = (0..a.len() as i64).chain(0..b.len() as i64).collect();
    let seq: Vec<i64> =
        std::iter::repeat_n(0, a.len()).chain(std::iter::repeat_n(1, b.len())).collect();
    let (input_ids, pos, seq) = (on(&packed), on(&positions), on(&seq));
    let input = ForwardInput {
        input_ids: &input_ids,
        position_ids: Some(&pos),
        attention_mask: None,
        sequence_ids: Some(&seq),
    };
    let got = tch::no_grad(|| model.forward(&input, None)).unwrap().to_kind(Kind::Float);
    assert!(finetune_local::models::varlen::flash_varlen_used(), "the kernel did not run");
    let alone =
        |x: &[i64]| tch::no_grad(|| model.forward(&ForwardInput::new(&on(x)), None)).unwrap();
    let separate = Tensor::cat(&[alone(&a), alone(&b)], 1).to_kind(Kind::Float);
    let scale = separate.abs().max().double_value(&[]);
    let diff = max_abs_diff(&got, &separate);
    assert!(diff < 0.02 * scale, "packed vs separate max |Δ| = {diff:e} (max |logit| {scale})");
}

#[test]
fn weights_keep_their_hf_names_and_checkpoint_dtypes_convert() {
    let dir = fixtures().join("models/qwen3");
    let model = CausalLm::load(&dir, &LoadOptions::default()).unwrap();
    let vars = model.var_store().variables();
    assert!(vars.contains_key("model.layers.1.self_attn.q_norm.weight"));
    assert!(vars.contains_key("lm_head.weight"));
    // The fp16 checkpoint is computed in fp32 on CPU by default…
    assert!(vars.values().all(|t| t.kind() == Kind::Float));
    // …and in the dtype asked for otherwise.
    let bf16 =
        CausalLm::load(&dir, &LoadOptions { dtype: Some(Kind::BFloat16), ..Default::default() })
            .unwrap();
    let logits = tch::no_grad(|| bf16.forward(&ForwardInput::new(&ids(&[0, 5, 9])), None)).unwrap();
    assert_eq!(logits.kind(), Kind::BFloat16);
    // Tied models hold one embedding matrix, not two.
    let tied = CausalLm::load(&fixtures().join("models/qwen2"), &LoadOptions::default()).unwrap();
    assert!(!tied.var_store().variables().contains_key("lm_head.weight"));
}
