//! GGUF: dequantization equals the `gguf` package's, an imported model
//! equals the checkpoint it was converted from, and damaged or unsupported
//! files give typed errors naming the file and tensor.
//!
//! The fixtures under tests/fixtures/gguf were written by
//! `make_gguf_fixtures.py` (gguf 0.19.0): see that script.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use finetune_local::gguf::{GgmlType, GgufFile, import_gguf, import_gguf_to_cache};
use finetune_local::tch::{self, Kind, Tensor};
use finetune_local::{
    CausalLm, ChatMessage, ForwardInput, LoadOptions, LocalError, ModelCache, ModelConfig, ModelId,
    Tokenizer, locate,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn gguf(name: &str) -> PathBuf {
    fixtures().join("gguf").join(name)
}

#[test]
fn dequantization_equals_the_gguf_package() {
    let file = GgufFile::open(&gguf("blocks.gguf")).unwrap();
    let mut checked = Vec::new();
    for raw in file.tensors().iter().filter(|t| t.name.ends_with(".raw")) {
        let ty = raw.name.trim_end_matches(".raw");
        let expected = file.tensor(&format!("{ty}.expected")).unwrap();
        assert_eq!(expected.ggml_type, GgmlType::F32);
        assert_eq!(raw.dims, expected.dims, "{ty}");
        let ours = file.read_f32(raw).unwrap();
        let theirs = file.read_f32(expected).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ty}");
        let differing =
            ours.iter().zip(&theirs).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differing, 0, "{ty}: {differing} of {} values differ", ours.len());
        // Random blocks exercise every quantized value, not only zeros.
        assert!(theirs.iter().filter(|v| **v != 0.0).count() > theirs.len() / 2, "{ty}");
        checked.push(raw.ggml_type.to_string());
    }
    checked.sort();
    assert_eq!(checked, ["BF16", "F16", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]);
}

#[test]
fn an_imported_model_equals_its_source_checkpoint() {
    let source = fixtures().join("models/llama_tied_bf16");
    let out = tempfile::tempdir().unwrap();
    let report = import_gguf(&gguf("tiny-llama.gguf"), out.path()).unwrap();
    assert_eq!(report.architecture, "llama");
    assert_eq!(report.tensors, 20);
    assert_eq!(report.vocab_size, 384);
    assert!(report.chat_template);
    assert_eq!(report.source_types.get("BF16"), Some(&20));

    // The same configuration as the HF checkpoint it was converted from.
    let ours = ModelConfig::from_dir(out.path()).unwrap();
    let theirs = ModelConfig::from_dir(&source).unwrap();
    assert_eq!(
        (ours.vocab_size, ours.hidden_size, ours.intermediate_size, ours.num_layers),
        (theirs.vocab_size, theirs.hidden_size, theirs.intermediate_size, theirs.num_layers)
    );
    assert_eq!((ours.num_heads, ours.num_kv_heads, ours.head_dim), (4, 4, 16));
    assert_eq!(ours.norm_eps, theirs.norm_eps);
    assert_eq!(ours.rope, theirs.rope);
    assert!(ours.tie_word_embeddings);
    assert_eq!(ours.eos_token_ids, theirs.eos_token_ids);

    // Every weight, bit for bit (the q/k permutation undone), in f32.
    let read = |dir: &Path| Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    let mut source_weights = read(&source);
    let mut imported = read(out.path());
    source_weights.sort_by(|a, b| a.0.cmp(&b.0));
    imported.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = imported.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, source_weights.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>());
    for ((name, a), (_, b)) in imported.iter().zip(&source_weights) {
        assert_eq!(a.kind(), Kind::Float, "{name}");
        assert!(a.equal(&b.to_kind(Kind::Float)), "{name} differs");
    }

    // The same logits.
    let options = LoadOptions { dtype: Some(Kind::Float), ..LoadOptions::default() };
    let ids = Tensor::from_slice(&[0i64, 40, 41, 42, 120, 7]).view([1, -1]);
    let a = CausalLm::load(out.path(), &options).unwrap();
    let b = CausalLm::load(&source, &options).unwrap();
    let a = tch::no_grad(|| a.forward(&ForwardInput::new(&ids), None)).unwrap();
    let b = tch::no_grad(|| b.forward(&ForwardInput::new(&ids), None)).unwrap();
    assert!(a.equal(&b));

    // The tokenizer splits text, adds BOS and decodes as the source's does;
    // the chat template came along.
    let ours = Tokenizer::from_dir(out.path()).unwrap();
    let theirs = Tokenizer::from_dir(&source).unwrap();
    for text in ["The quick brown fox", "  two  spaces\nand a line", "<|eot_id|>x 12345", "é ü ß"]
    {
        let ids = ours.encode(text, true).unwrap();
        assert_eq!(ids, theirs.encode(text, true).unwrap(), "{text:?}");
        assert_eq!(ours.decode(&ids, true).unwrap(), theirs.decode(&ids, true).unwrap());
    }
    assert_eq!(ours.eos_token_ids(), theirs.eos_token_ids());
    let llama = Tokenizer::from_dir(&fixtures().join("models/llama")).unwrap();
    let chat = [ChatMessage::system("Be brief."), ChatMessage::user("Hi")];
    assert_eq!(
        ours.apply_chat_template(&chat, true).unwrap(),
        llama.apply_chat_template(&chat, true).unwrap()
    );
}

#[test]
fn importing_into_the_cache_is_idempotent_and_loads_by_id() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = ModelCache::at(tmp.path());
    let id = ModelId::parse("fixture/tiny-llama-gguf").unwrap();
    let first = import_gguf_to_cache(&gguf("tiny-llama.gguf"), &cache, &id).unwrap();
    let second = import_gguf_to_cache(&gguf("tiny-llama.gguf"), &cache, &id).unwrap();
    assert_eq!(first, second);
    assert_eq!(locate("fixture/tiny-llama-gguf", &cache).unwrap(), first);
    // Only the model folder: no staging left behind.
    let entries: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["models--fixture--tiny-llama-gguf"]);
    CausalLm::load(&first, &LoadOptions::default()).unwrap();
}

#[test]
fn an_unsupported_tensor_type_is_named_with_its_tensor() {
    let path = gguf("unsupported.gguf");
    match GgufFile::open(&path).unwrap_err() {
        LocalError::UnsupportedGguf { path: p, tensor, what } => {
            assert_eq!(p, path);
            assert_eq!(tensor.as_deref(), Some("blk.0.attn_q.weight"));
            assert!(what.contains("ggml type 6"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    let message = import_gguf(&path, tempfile::tempdir().unwrap().path()).unwrap_err().to_string();
    assert!(
        message.contains("unsupported.gguf") && message.contains("blk.0.attn_q.weight"),
        "{message}"
    );
}

#[test]
fn damaged_and_foreign_files_give_typed_errors_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    // Not GGUF at all.
    let foreign = fixtures().join("models/llama/config.json");
    match GgufFile::open(&foreign).unwrap_err() {
        LocalError::InvalidGguf { path, message, .. } => {
            assert_eq!(path, foreign);
            assert!(message.contains("not a GGUF file"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    // Cut anywhere: in the header, the metadata, the tensor table or the
    // data. Every cut is an error naming the file; none panics.
    let bytes = std::fs::read(gguf("tiny-llama.gguf")).unwrap();
    let cut_path = tmp.path().join("cut.gguf");
    let mut in_data = 0;
    for cut in (0..bytes.len()).step_by(997).chain([3, 4, 8, 23, bytes.len() - 1]) {
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        let err = import_gguf(&cut_path, &tmp.path().join("out")).unwrap_err();
        match &err {
            LocalError::InvalidGguf { path, message, tensor } => {
                assert_eq!(path, &cut_path);
                assert!(
                    message.contains("truncated") || message.contains("not a GGUF"),
                    "{cut}: {message}"
                );
                in_data += usize::from(tensor.is_some());
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // Cuts inside the tensor data name the tensor that runs past the end.
    assert!(in_data > 10, "{in_data}");
    assert!(!tmp.path().join("out/model.safetensors").exists());
}
