//! Adapters and merged models we write load back, in our loader and (the
//! ignored test, run by .ci/run with Python) in PEFT and transformers.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use finetune_local::lora::LoraConfig;
use finetune_local::tch::{self, Kind, Tensor};
use finetune_local::{CausalLm, ForwardInput, LoadOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name)
}

fn ids() -> Tensor {
    Tensor::from_slice(&[0i64, 17, 99, 250, 3, 42, 7, 300]).view([1, -1])
}

fn logits(model: &CausalLm) -> Tensor {
    tch::no_grad(|| model.forward(&ForwardInput::new(&ids()), None)).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

/// Trains nothing but gives every adapter weight a value, saves the adapter
/// and the merged model, and returns our logits with adapters.
fn write_outputs(name: &str, targets: &[&str], out: &Path) -> Tensor {
    let mut model = CausalLm::load(&fixture(name), &LoadOptions::default()).unwrap();
    let config = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        use_rslora: name == "qwen2",
    };
    model.add_lora(&config).unwrap();
    tch::manual_seed(11);
    for (_, mut t) in model.adapter_store().unwrap().0.variables() {
        let _ = tch::no_grad(|| {
            t.f_add_(&(Tensor::randn(t.size(), (Kind::Float, tch::Device::Cpu)) * 0.05))
        });
    }
    let expected = logits(&model);
    model.save_adapter(&out.join("adapter"), fixture(name).to_str().unwrap()).unwrap();
    model.merge_lora().unwrap();
    model.save_pretrained(&out.join("merged"), &fixture(name)).unwrap();
    expected
}

const CASES: &[(&str, &[&str])] = &[
    ("llama", &["q_proj", "v_proj", "down_proj"]),
    ("qwen2", &["all-linear"]),
    ("gpt2", &["c_attn", "c_fc"]),
];

#[test]
fn our_loader_reads_back_adapters_and_merged_models() {
    for (name, targets) in CASES {
        let tmp = tempfile::tempdir().unwrap();
        let expected = write_outputs(name, targets, tmp.path());
        let mut with_adapter = CausalLm::load(&fixture(name), &LoadOptions::default()).unwrap();
        with_adapter.load_adapter(&tmp.path().join("adapter")).unwrap();
        assert_eq!(max_diff(&logits(&with_adapter), &expected), 0.0, "{name}: adapter");
        let merged = CausalLm::load(&tmp.path().join("merged"), &LoadOptions::default()).unwrap();
        let diff = max_diff(&logits(&merged), &expected);
        assert!(diff < 1e-4, "{name}: merged max |Δ| = {diff:e}");
        let config =
            std::fs::read_to_string(tmp.path().join("adapter/adapter_config.json")).unwrap();
        assert!(config.contains("\"peft_type\": \"LORA\""));
    }
}

#[test]
#[ignore = "needs Python with transformers and peft (scripts/setup --hf); run by .ci/run"]
fn peft_and_transformers_load_our_outputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pythonpath = format!(
        "{}:{}",
        root.join(".tools/hf-python").display(),
        root.join(".libtorch/site").display()
    );
    for (name, targets) in CASES {
        let tmp = tempfile::tempdir().unwrap();
        let expected = write_outputs(name, targets, tmp.path());
        let ours = tmp.path().join("ours.safetensors");
        Tensor::write_safetensors(&[("input_ids", ids()), ("expected", expected)], &ours).unwrap();
        let out = std::process::Command::new("python3")
            .arg(root.join("finetune-local/tests/fixtures/verify_peft.py"))
            .arg("--base")
            .arg(fixture(name))
            .arg("--adapter")
            .arg(tmp.path().join("adapter"))
            .arg("--merged")
            .arg(tmp.path().join("merged"))
            .arg("--ours")
            .arg(&ours)
            .env("PYTHONPATH", &pythonpath)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{name}: {stdout}");
        assert!(out.status.success(), "{name}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    }
}
