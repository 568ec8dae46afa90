//! Broken model directories give typed errors naming the file and field or
//! tensor, never a panic.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use finetune_local::{CausalLm, LoadOptions, LocalError, Tokenizer};

fn copy_fixture(name: &str) -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name);
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> LocalError {
    CausalLm::load(dir, &LoadOptions::default()).unwrap_err()
}

#[test]
fn truncated_and_corrupt_safetensors() {
    let tmp = copy_fixture("qwen2");
    let file = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(tmp.path());
    assert!(matches!(e, LocalError::InvalidModelFile { .. }), "{e}");
    assert!(
        e.to_string().contains("model.safetensors") && e.to_string().contains("past the end"),
        "{e}"
    );

    std::fs::write(&file, b"not a safetensors file at all").unwrap();
    let e = load_err(tmp.path()).to_string();
    assert!(e.contains("not a safetensors file"), "{e}");

    std::fs::remove_file(&file).unwrap();
    let e = load_err(tmp.path()).to_string();
    assert!(e.contains("neither model.safetensors nor"), "{e}");
}

#[test]
fn config_that_disagrees_with_the_weights() {
    let tmp = copy_fixture("llama");
    let config = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"intermediate_size\": 96", "\"intermediate_size\": 128"),
    )
    .unwrap();
    let e = load_err(tmp.path());
    let LocalError::ShapeMismatch { name, expected, found, .. } = &e else { panic!("{e}") };
    assert_eq!(name, "model.layers.0.mlp.gate_proj.weight");
    assert_eq!((expected.as_slice(), found.as_slice()), (&[128, 64][..], &[96, 64][..]));

    std::fs::write(&config, text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"))
        .unwrap();
    let e = load_err(tmp.path());
    assert!(
        matches!(&e, LocalError::MissingWeight { name, .. } if name.starts_with("model.layers.2.")),
        "{e}"
    );

    std::fs::write(
        &config,
        text.replace("\"model_type\": \"llama\"", "\"model_type\": \"falcon\""),
    )
    .unwrap();
    let e = load_err(tmp.path()).to_string();
    assert!(
        e.contains("falcon") && e.contains("supported: llama, mistral, qwen2, qwen3, gpt2"),
        "{e}"
    );
}

#[test]
fn broken_tokenizer_files() {
    let tmp = copy_fixture("llama");
    std::fs::write(tmp.path().join("tokenizer_config.json"), "{\"bos_token\": 5}").unwrap();
    let e = Tokenizer::from_dir(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json") && e.contains("`bos_token`"), "{e}");
    std::fs::write(tmp.path().join("chat_template.jinja"), "{% if %}").unwrap();
    std::fs::write(tmp.path().join("tokenizer_config.json"), "{}").unwrap();
    assert!(matches!(Tokenizer::from_dir(tmp.path()).unwrap_err(), LocalError::Template { .. }));
    std::fs::remove_file(tmp.path().join("tokenizer.json")).unwrap();
    let e = Tokenizer::from_dir(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("missing"), "{e}");
}
