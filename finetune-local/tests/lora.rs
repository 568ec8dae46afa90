//! LoRA adapters: PEFT's init, names and scaling; gradients reach only the
//! adapters; merging folds them in without changing the function.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use finetune_local::lora::LoraConfig;
use finetune_local::tch::{self, Kind, Tensor};
use finetune_local::{CausalLm, ForwardInput, LoadOptions, LocalError};

fn load(name: &str) -> CausalLm {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name);
    CausalLm::load(&dir, &LoadOptions::default()).unwrap()
}

fn logits(model: &CausalLm) -> Tensor {
    let ids = Tensor::from_slice(&[0i64, 17, 99, 250, 3, 42, 7]).view([1, -1]);
    tch::no_grad(|| model.forward(&ForwardInput::new(&ids), None)).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

fn config(targets: &[&str]) -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        use_rslora: false,
    }
}

#[test]
fn fresh_adapters_follow_peft_init_and_change_nothing() {
    let mut model = load("llama");
    let before = logits(&model);
    assert_eq!(model.add_lora(&config(&["q_proj", "v_proj"])).unwrap(), 4);
    let state = model.peft_state();
    let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 8);
    assert!(names.contains(&"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert!(names.contains(&"base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"));
    for (name, t) in &state {
        if name.ends_with("lora_A.weight") {
            assert_eq!(t.size(), [4, 64]);
            let bound = 1.0 / 64f64.sqrt();
            assert!(f64::try_from(t.abs().max()).unwrap() <= bound);
            assert!(f64::try_from(t.std(true)).unwrap() > bound / 4.0, "A is random");
        } else {
            assert!(
                t.size()[1] == 4 && f64::try_from(t.abs().max()).unwrap() == 0.0,
                "B starts at zero"
            );
        }
    }
    assert_eq!(max_diff(&logits(&model), &before), 0.0);
}

#[test]
fn merged_weights_compute_what_the_adapters_compute() {
    for (name, targets) in [
        ("llama", &["all-linear"][..]),
        ("qwen2", &["q_proj", "down_proj"][..]),
        ("gpt2", &["c_attn", "c_fc"][..]),
    ] {
        let mut model = load(name);
        let base = logits(&model);
        model.add_lora(&LoraConfig { use_rslora: true, ..config(targets) }).unwrap();
        // Give B values, as training would.
        tch::manual_seed(3);
        for (_, mut t) in model.adapter_store().unwrap().0.variables() {
            let _ = tch::no_grad(|| {
                t.f_add_(&(Tensor::randn(t.size(), (Kind::Float, tch::Device::Cpu)) * 0.05))
            });
        }
        let adapted = logits(&model);
        assert!(max_diff(&adapted, &base) > 1e-3, "{name}: the adapters had no effect");
        model.merge_lora().unwrap();
        assert!(model.peft_state().is_empty());
        let merged = logits(&model);
        let diff = max_diff(&merged, &adapted);
        assert!(diff < 1e-4, "{name}: merged vs adapter max |Δ| = {diff:e}");
    }
}

#[test]
fn only_the_adapters_receive_gradients() {
    let mut model = load("qwen3");
    model.add_lora(&config(&["q_proj", "v_proj"])).unwrap();
    model.set_training(true);
    let ids = Tensor::from_slice(&[0i64, 17, 99, 250, 3]).view([1, -1]);
    let out = model.forward(&ForwardInput::new(&ids), None).unwrap();
    out.sum(Kind::Float).backward();
    for (name, t) in model.adapter_store().unwrap().0.variables() {
        let grad = t.grad();
        assert!(grad.defined(), "{name} has no gradient");
        if name.contains("lora_B") {
            assert!(f64::try_from(grad.abs().sum(Kind::Float)).unwrap() > 0.0, "{name}");
        }
    }
    for (name, t) in model.var_store().variables() {
        assert!(!t.requires_grad() && !t.grad().defined(), "base weight {name} would be trained");
    }
}

#[test]
fn bad_lora_configs_are_refused() {
    let mut model = load("llama");
    let e = model.add_lora(&config(&["c_attn"])).unwrap_err();
    assert!(matches!(e, LocalError::InvalidArgument(ref m) if m.contains("c_attn")), "{e}");
    assert!(model.add_lora(&LoraConfig { r: 0, ..config(&["q_proj"]) }).is_err());
    assert!(model.add_lora(&LoraConfig { dropout: 1.0, ..config(&["q_proj"]) }).is_err());
    model.add_lora(&config(&["q_proj"])).unwrap();
    assert!(model.add_lora(&config(&["q_proj"])).is_err(), "adapters twice");
}
