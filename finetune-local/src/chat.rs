//! Chat templates, rendered as transformers renders them.
//!
//! transformers compiles a tokenizer's `chat_template` with Jinja2 in a
//! sandbox with `trim_blocks` and `lstrip_blocks`, the loop-controls
//! extension, a `{% generation %}` block tag (for assistant masks), the
//! globals `raise_exception` and `strftime_now`, and a `tojson` filter that
//! writes like Python's `json.dumps`. This module does the same with
//! minijinja, whose `pycompat` layer supplies the Python string and dict
//! methods templates call (`.strip()`, `.split()`, `.items()`, …), as HF's
//! own text-generation-inference does.

use std::fmt::Write as _;
use std::sync::OnceLock;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};

use crate::error::{LocalError, Result};

/// The workspace's one message type: datasets become these, templates
/// render them, chat models answer them.
pub use finetune_core::{ChatMessage, Role};

/// The special tokens a template may refer to (`bos_token`, `eos_token`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence.
    pub bos_token: Option<String>,
    /// End of sequence.
    pub eos_token: Option<String>,
    /// Padding.
    pub pad_token: Option<String>,
    /// Unknown token.
    pub unk_token: Option<String>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("source", &self.source).finish_non_exhaustive()
    }
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`.
    pub fn new(source: impl Into<String>) -> Result<Self> {
        let source: String = source.into();
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(template_error)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, strip_generation_tags(&source)).map_err(template_error)?;
        Ok(Self { source, env })
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` with the special tokens; `add_generation_prompt`
    /// appends the opening of an assistant turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        special: &SpecialTokens,
    ) -> Result<String> {
        let template = self.env.get_template(NAME).map_err(template_error)?;
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            tools => Value::from(()),
            documents => Value::from(()),
            bos_token => special.bos_token.as_deref().unwrap_or(""),
            eos_token => special.eos_token.as_deref().unwrap_or(""),
            pad_token => special.pad_token.as_deref().unwrap_or(""),
            unk_token => special.unk_token.as_deref().unwrap_or(""),
        };
        template.render(ctx).map_err(template_error)
    }
}

/// The format used when a tokenizer has no chat template: each message on
/// its own lines as `### {Role}:` followed by the text, then `### Assistant:`
/// when a generation prompt is asked for.
pub fn plain_chat_format(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        let _ = write!(out, "### {}:\n{}\n\n", capitalize(m.role.as_str()), m.content);
    }
    if add_generation_prompt {
        out.push_str("### Assistant:\n");
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn template_error(e: minijinja::Error) -> LocalError {
    // A template's own raise_exception carries its message verbatim, as
    // transformers reports it; other errors keep minijinja's location.
    if let Some(raised) = e.detail().and_then(|d| d.strip_prefix(RAISED)) {
        return LocalError::Template { message: raised.to_owned() };
    }
    LocalError::Template { message: e.to_string() }
}

const RAISED: &str = "raise_exception: ";

/// `{% generation %}…{% endgeneration %}` marks assistant text for masks;
/// for rendering it is a no-op block, so it becomes `{% if true %}…{% endif %}`
/// with the same whitespace control.
fn strip_generation_tags(source: &str) -> String {
    static OPEN: OnceLock<regex::Regex> = OnceLock::new();
    static CLOSE: OnceLock<regex::Regex> = OnceLock::new();
    let open = OPEN.get_or_init(|| {
        regex::Regex::new(r"\{%(-?)\s*generation\s*(-?)%\}").expect("static regex")
    });
    let close = CLOSE.get_or_init(|| {
        regex::Regex::new(r"\{%(-?)\s*endgeneration\s*(-?)%\}").expect("static regex")
    });
    let s = open.replace_all(source, "{%${1} if true ${2}%}");
    close.replace_all(&s, "{%${1} endif ${2}%}").into_owned()
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{message}")))
}

fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    // Templates use it for "Today's date"; without a time-zone database the
    // UTC date is what we can offer. Only the common directives are honoured.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month_name = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    Ok(Value::from(out))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False,
/// indent=indent, separators=separators, sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            ));
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let style = JsonStyle { indent, item_sep, key_sep, sort_keys: sort_keys.unwrap_or(false) };
    let mut out = String::new();
    write_json(&mut out, &value, &style, 0)?;
    // Marked safe, as Jinja's own tojson output is.
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn write_json(
    out: &mut String,
    v: &Value,
    style: &JsonStyle,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            let text = v.to_string();
            // Python prints floats with a decimal point.
            if v.as_i64().is_none() && !text.contains(['.', 'e', 'E', 'n', 'i']) {
                let _ = write!(out, "{text}.0");
            } else {
                out.push_str(&text);
            }
        }
        ValueKind::String | ValueKind::Bytes => {
            let s = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
            out.push_str(&serde_json::to_string(&s).unwrap_or_default());
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, style, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if style.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                let k = key.as_str().map(str::to_owned).unwrap_or_else(|| key.to_string());
                out.push_str(&serde_json::to_string(&k).unwrap_or_default());
                out.push_str(&style.key_sep);
                write_json(out, &v.get_item(key)?, style, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {}", v.kind()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_writes_like_python() {
        let t = ChatTemplate::new(
            "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'é<' | tojson }}|{{ 1.0 | tojson }}",
        )
        .unwrap();
        let env_out = t
            .env
            .render_str(
                "{{ x | tojson }}",
                minijinja::context! { x => Value::from(minijinja::value::Serde(serde_json::json!({"b": [1, "two"], "a": null}))) },
            )
            .unwrap();
        assert_eq!(env_out, r#"{"a": null, "b": [1, "two"]}"#);
        let pretty = t
            .env
            .render_str("{{ x | tojson(indent=2) }}", minijinja::context! { x => vec![1, 2] })
            .unwrap();
        assert_eq!(pretty, "[\n  1,\n  2\n]");
        let s = t.env.render_str("{{ 'é<' | tojson }}", minijinja::context! {}).unwrap();
        assert_eq!(s, "\"é<\"");
    }

    #[test]
    fn generation_tags_keep_their_whitespace_control() {
        assert_eq!(
            strip_generation_tags("a{%- generation %}b{% endgeneration -%}c{%generation%}"),
            "a{%- if true %}b{% endif -%}c{% if true %}"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
    }

    #[test]
    fn plain_format_without_template() {
        let text =
            plain_chat_format(&[ChatMessage::system("Be brief."), ChatMessage::user("Hi")], true);
        assert_eq!(text, "### System:\nBe brief.\n\n### User:\nHi\n\n### Assistant:\n");
    }
}
