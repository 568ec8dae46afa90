//! The main job's task for a real pretrained model: routing a customer
//! message to `billing`, `shipping` or `technical`, with a system message —
//! a closed classification an instruct model answers in sentences until it
//! is fine-tuned. Training rows use four phrasings per team in four
//! templates; the held-out rows use two other phrasings in two other
//! templates, so a right answer there is generalisation, not recall.

use std::ops::Range;
use std::path::Path;

/// The system message of every row.
pub const SYSTEM: &str =
    "Route the customer message to a team. Answer with one word: billing, shipping or technical.";

/// Each team and six ways a message may name its topic.
const TOPICS: [(&str, [&str; 6]); 3] = [
    (
        "billing",
        [
            "a double charge on my card",
            "my invoice total",
            "a refund for last month",
            "the amount I was billed",
            "my subscription payment",
            "a charge I do not recognise",
        ],
    ),
    (
        "shipping",
        [
            "my parcel",
            "the delivery date",
            "the tracking number",
            "a package sent to the wrong address",
            "the courier who never came",
            "my order that has not arrived",
        ],
    ),
    (
        "technical",
        [
            "the app crashing",
            "a login error",
            "the password reset page",
            "the website not loading",
            "an error code at startup",
            "the sync feature failing",
        ],
    ),
];

const TEMPLATES: [&str; 6] = [
    "Hi, I have a question about {}.",
    "Can someone help me with {}?",
    "I am writing about {}, please advise.",
    "Urgent: a problem with {}.",
    "Hello team, {} needs looking at.",
    "Quick question regarding {}.",
];

/// One message and the team it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The customer's message (the prompt).
    pub message: String,
    /// The team (the completion).
    pub team: &'static str,
}

fn tickets(phrases: Range<usize>, templates: Range<usize>) -> Vec<Ticket> {
    let mut out = Vec::new();
    for (team, list) in TOPICS {
        for phrase in &list[phrases.clone()] {
            for template in &TEMPLATES[templates.clone()] {
                out.push(Ticket { message: template.replace("{}", phrase), team });
            }
        }
    }
    out
}

/// The 48 training rows.
pub fn training() -> Vec<Ticket> {
    tickets(0..4, 0..4)
}

/// The 12 held-out rows: phrasings and templates training never shows.
pub fn held_out() -> Vec<Ticket> {
    tickets(4..6, 4..6)
}

/// Writes `tickets` as JSON Lines (`system`, `prompt`, `completion`).
pub fn write_jsonl(path: &Path, tickets: &[Ticket]) -> std::io::Result<()> {
    let text: String = tickets
        .iter()
        .map(|t| {
            serde_json::json!({ "system": SYSTEM, "prompt": t.message, "completion": t.team })
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_rows_share_no_phrasing_or_template_with_training() {
        let (train, held) = (training(), held_out());
        assert_eq!((train.len(), held.len()), (48, 12));
        for t in &held {
            assert!(train.iter().all(|r| r.message != t.message));
        }
        assert!(TOPICS.iter().all(|(_, list)| {
            list[4..].iter().all(|p| train.iter().all(|r| !r.message.contains(p)))
        }));
    }
}
