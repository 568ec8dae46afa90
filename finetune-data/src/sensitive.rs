//! The sensitive-data scan.
//!
//! Fine-tuning applies none of a connection's guardrails: no PII detection
//! runs on training data. This scan makes likely personal and secret data
//! visible before it leaves the building — e-mail addresses, phone numbers,
//! payment-card numbers (Luhn-checked), IBANs (mod-97-checked), cloud and API
//! access keys, and private-key blocks — and can redact it.
//!
//! It is a pattern scan, not a guarantee: it finds the common shapes and
//! checks digits where a checksum exists, to keep false alarms down.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// What kind of sensitive data a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SensitiveKind {
    /// An e-mail address.
    Email,
    /// A phone number.
    Phone,
    /// A payment-card number that passes the Luhn check.
    CreditCard,
    /// An IBAN that passes the mod-97 check.
    Iban,
    /// A cloud or API access key (AWS, Google, Azure storage, GitHub, OpenAI, Slack).
    AccessKey,
    /// A PEM private-key block.
    PrivateKey,
}

impl SensitiveKind {
    /// The placeholder redaction puts in its place.
    pub fn placeholder(&self) -> &'static str {
        match self {
            Self::Email => "[EMAIL]",
            Self::Phone => "[PHONE]",
            Self::CreditCard => "[CREDIT_CARD]",
            Self::Iban => "[IBAN]",
            Self::AccessKey => "[ACCESS_KEY]",
            Self::PrivateKey => "[PRIVATE_KEY]",
        }
    }
}

impl fmt::Display for SensitiveKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Email => "e-mail address",
            Self::Phone => "phone number",
            Self::CreditCard => "payment-card number",
            Self::Iban => "IBAN",
            Self::AccessKey => "access key",
            Self::PrivateKey => "private key",
        })
    }
}

/// One match: its kind and byte range in the scanned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    /// What it looks like.
    pub kind: SensitiveKind,
    /// Byte offset of the start.
    pub start: usize,
    /// Byte offset past the end.
    pub end: usize,
}

struct Patterns {
    // Checked in this order; a later match overlapping an earlier one is
    // dropped (a card number is not also a phone number).
    list: Vec<(SensitiveKind, Regex)>,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |s: &str| Regex::new(s).unwrap_or_else(|e| panic!("built-in pattern {s}: {e}"));
        Patterns {
            list: vec![
                (
                    SensitiveKind::PrivateKey,
                    re(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----(?s:.*?)(?:-----END (?:[A-Z]+ )*PRIVATE KEY-----|\z)"),
                ),
                (
                    SensitiveKind::AccessKey,
                    re(concat!(
                        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b",
                        r"|\bAIza[0-9A-Za-z_\-]{35}",
                        r"|AccountKey=[A-Za-z0-9+/=]{40,}",
                        r"|\bgh[pousr]_[A-Za-z0-9]{36,}",
                        r"|\bsk-(?:proj-)?[A-Za-z0-9_\-]{20,}",
                        r"|\bxox[abprs]-[A-Za-z0-9\-]{10,}",
                    )),
                ),
                (SensitiveKind::Email, re(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b")),
                (SensitiveKind::Iban, re(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b")),
                (SensitiveKind::CreditCard, re(r"\b\d(?:[ \-]?\d){12,18}\b")),
                (SensitiveKind::Phone, re(r"(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,4}\)[ .\-]?)?\d{2,4}(?:[ .\-]\d{2,4}){1,4}\b|\+\d{8,15}\b")),
            ],
        }
    })
}

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

fn luhn(ds: &[u32]) -> bool {
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d })
        .sum();
    sum.is_multiple_of(10)
}

fn iban_ok(s: &str) -> bool {
    let compact: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut rem = 0u32;
    for c in rearranged {
        let v = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

fn accept(kind: SensitiveKind, text: &str) -> bool {
    match kind {
        SensitiveKind::CreditCard => {
            let ds = digits(text);
            (13..=19).contains(&ds.len()) && luhn(&ds)
        }
        SensitiveKind::Iban => iban_ok(text),
        SensitiveKind::Phone => {
            let n = digits(text).len();
            (8..=15).contains(&n) && !looks_like_date_or_number(text)
        }
        _ => true,
    }
}

/// `2024-01-15 10:30`, `3.14159 2.71828` and plain long numbers are not phone
/// numbers; a phone has separators or a leading `+`.
fn looks_like_date_or_number(text: &str) -> bool {
    let t = text.trim();
    if t.starts_with('+') {
        return false;
    }
    let bytes = t.as_bytes();
    let date = bytes.len() >= 10 && bytes[4] == b'-' && bytes[7] == b'-';
    date || t.contains('.') && !t.contains(' ') && !t.contains('-')
}

/// Finds likely sensitive data in `text`, in order, without overlaps.
pub fn scan(text: &str) -> Vec<Finding> {
    let mut found: Vec<Finding> = Vec::new();
    for (kind, re) in &patterns().list {
        for m in re.find_iter(text) {
            if !accept(*kind, m.as_str()) {
                continue;
            }
            if found.iter().any(|f| m.start() < f.end && f.start < m.end()) {
                continue;
            }
            found.push(Finding { kind: *kind, start: m.start(), end: m.end() });
        }
    }
    found.sort_by_key(|f| f.start);
    found
}

/// `text` with every finding replaced by its kind's placeholder.
pub fn redact(text: &str) -> Cow<'_, str> {
    let findings = scan(text);
    if findings.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in findings {
        out.push_str(&text[at..f.start]);
        out.push_str(f.kind.placeholder());
        at = f.end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// A short, masked sample of a finding for reports: enough to find it, not
/// enough to leak it.
pub fn masked(text: &str, finding: &Finding) -> String {
    let s = &text[finding.start..finding.end];
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= 4 {
        return "****".into();
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}…{tail} ({} chars)", chars.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<SensitiveKind> {
        scan(text).into_iter().map(|f| f.kind).collect()
    }

    #[test]
    fn finds_each_kind() {
        assert_eq!(kinds("write to jane.doe+ft@example.co.uk today"), [SensitiveKind::Email]);
        assert_eq!(kinds("call +44 20 7946 0958 now"), [SensitiveKind::Phone]);
        assert_eq!(kinds("card 4111 1111 1111 1111 exp 12/29"), [SensitiveKind::CreditCard]);
        assert_eq!(kinds("IBAN GB82 WEST 1234 5698 7654 32 please"), [SensitiveKind::Iban]);
        assert_eq!(kinds("key AKIAIOSFODNN7EXAMPLE in config"), [SensitiveKind::AccessKey]);
        assert_eq!(
            kinds("use sk-proj-abcdefghijklmnopqrstuvwxyz012345"),
            [SensitiveKind::AccessKey]
        );
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----";
        assert_eq!(kinds(pem), [SensitiveKind::PrivateKey]);
    }

    #[test]
    fn checksums_keep_false_alarms_down() {
        assert!(
            kinds("card 4111 1111 1111 1112").iter().all(|k| *k != SensitiveKind::CreditCard),
            "fails Luhn"
        );
        assert!(
            kinds("GB82 WEST 1234 5698 7654 33").iter().all(|k| *k != SensitiveKind::Iban),
            "fails mod-97"
        );
        assert!(kinds("Spell backwards: apple").is_empty());
        assert!(kinds("released on 2024-01-15 at 10:30").is_empty());
        assert!(kinds("pi is 3.14159265358979").is_empty());
    }

    #[test]
    fn redaction_replaces_every_finding() {
        let text = "mail bob@example.com, card 4111-1111-1111-1111.";
        assert_eq!(redact(text), "mail [EMAIL], card [CREDIT_CARD].");
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
        let f = scan("bob@example.com")[0];
        assert_eq!(masked("bob@example.com", &f), "bo…om (15 chars)");
    }
}
