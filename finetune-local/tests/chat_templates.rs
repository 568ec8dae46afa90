//! Real public chat templates render exactly as transformers'
//! `apply_chat_template` rendered them (chat_templates/reference.json).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use finetune_local::chat::{ChatMessage, ChatTemplate, SpecialTokens};
use finetune_local::{LocalError, Tokenizer};
use serde::Deserialize;

#[derive(Deserialize)]
struct TemplateReference {
    template: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    rendered: Option<String>,
    error: Option<String>,
}

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates")
}

#[test]
fn templates_render_like_transformers() {
    let refs: Vec<TemplateReference> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap())
            .unwrap();
    assert_eq!(refs.len(), 6);
    let mut compared = 0;
    for r in refs {
        let source = std::fs::read_to_string(dir().join(&r.template)).unwrap();
        let template = ChatTemplate::new(source).unwrap();
        let special = SpecialTokens {
            bos_token: r.bos_token.clone(),
            eos_token: r.eos_token.clone(),
            ..Default::default()
        };
        for case in &r.cases {
            let got = template.render(&case.messages, case.add_generation_prompt, &special);
            match (&case.rendered, &case.error, got) {
                (Some(want), _, Ok(got)) => {
                    assert_eq!(&got, want, "{} {:?}", r.template, case.messages)
                }
                (_, Some(want), Err(LocalError::Template { message })) => {
                    assert_eq!(&message, want, "{}", r.template)
                }
                (want, want_err, got) => {
                    panic!("{}: want {want:?} / error {want_err:?}, got {got:?}", r.template)
                }
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 60);
}

#[test]
fn tokenizers_load_their_templates_and_fall_back_to_plain_text() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let conversation =
        [ChatMessage::system("Be brief."), ChatMessage::user("Spell backwards: lantern")];
    let llama = Tokenizer::from_dir(&models.join("llama")).unwrap();
    let text = llama.apply_chat_template(&conversation, true).unwrap();
    assert!(text.starts_with(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    ));
    assert!(text.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"));
    // The template writes the BOS itself; encoding it without special tokens
    // keeps exactly one.
    let ids = llama.encode(&text, false).unwrap();
    let bos = llama.token_id("<|begin_of_text|>").unwrap();
    assert_eq!(ids.iter().filter(|&&t| t == bos).count(), 1);
    assert_eq!(llama.eos_token_ids(), &[1, 2]);

    let gpt2 = Tokenizer::from_dir(&models.join("gpt2")).unwrap();
    assert!(gpt2.chat_template().is_none());
    assert_eq!(
        gpt2.apply_chat_template(&conversation, true).unwrap(),
        "### System:\nBe brief.\n\n### User:\nSpell backwards: lantern\n\n### Assistant:\n"
    );
}

#[test]
fn template_errors_are_reported_not_panics() {
    let e = ChatTemplate::new("{% for m in messages %}{{ m.content }").unwrap_err();
    assert!(matches!(e, LocalError::Template { .. }), "{e}");
    let t = ChatTemplate::new("{{ raise_exception('no system messages, please') }}").unwrap();
    let e = t.render(&[ChatMessage::user("hi")], false, &SpecialTokens::default()).unwrap_err();
    assert_eq!(e.to_string(), "chat template: no system messages, please");
}
