//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template` in a GGUF file,
//! `chat_template` in `tokenizer_config.json`) rendered as `transformers`' `apply_chat_template`
//! renders it — blocks trimmed (`trim_blocks`, `lstrip_blocks`), Python's string and dict
//! methods (`.strip()`, `.items()`, ...), `raise_exception(message)`, and a `tojson` that
//! writes non-ASCII and HTML characters as they are.

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};

use crate::{Error, Result};

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

const NAME: &str = "chat_template";

/// Template instructions one render may run: far more than any real template needs for a long
/// conversation, and a bound on what a crafted one (a template inside a GGUF file is untrusted
/// text) can make a render do: nested loops end with an error instead of hanging.
const FUEL: u64 = 5_000_000;

fn raise_exception(message: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False)`, optionally indented.
fn tojson(value: Value, indent: Option<usize>) -> std::result::Result<Value, JinjaError> {
    let v: serde_json::Value = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let text = match indent {
        None => python_json(&v),
        Some(n) => {
            let mut buf = Vec::new();
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
            serde::Serialize::serialize(&v, &mut ser)
                .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
            String::from_utf8_lossy(&buf).into_owned()
        }
    };
    Ok(Value::from_safe_string(text))
}

/// `json.dumps`' default separators: `", "` and `": "`.
fn python_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(python_json).collect();
            format!("[{}]", inner.join(", "))
        }
        serde_json::Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}: {}",
                        serde_json::Value::from(k.as_str()),
                        python_json(v)
                    )
                })
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        other => other.to_string(),
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error names the line.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Internal(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| Error::format("chat template", e.to_string()))?;
        Ok(ChatTemplate { env })
    }

    /// Renders the template with `context` (a JSON object: `messages`, `add_generation_prompt`,
    /// `bos_token`, `eos_token`, `tools`, ...).
    pub fn render(&self, context: &serde_json::Value) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::Internal(e.to_string()))?;
        tmpl.render(Value::from(minijinja::value::Serde(context)))
            .map_err(|e| {
                let mut msg = e.to_string();
                if let Some(detail) = e.detail() {
                    if !msg.contains(detail) {
                        msg = format!("{msg}: {detail}");
                    }
                }
                Error::invalid(format!("chat template: {msg}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chatml_with_trimmed_blocks_and_python_methods() {
        let src = "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}\
                   {{ '<|im_start|>system\\nhi<|im_end|>\\n' }}{% endif %}\
                   {{ '<|im_start|>' + m['role'] + '\\n' + m['content'].strip() + '<|im_end|>\\n' }}\
                   {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let t = ChatTemplate::new(src).unwrap();
        let out = t
            .render(&json!({"messages": [{"role": "user", "content": " Q? "}],
                            "add_generation_prompt": true}))
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nhi<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_and_tojson() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}").unwrap();
        let err = t.render(&json!({})).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
        let t = ChatTemplate::new("{{ x | tojson }}").unwrap();
        assert_eq!(
            t.render(&json!({"x": {"a": [1, "é<"]}})).unwrap(),
            "{\"a\": [1, \"é<\"]}"
        );
        assert!(ChatTemplate::new("{% for %}").is_err());
        // A crafted template runs out of fuel instead of hanging.
        let t = ChatTemplate::new(
            "{% for i in range(99999) %}{% for j in range(99999) %}{{ i }}{% endfor %}{% endfor %}",
        )
        .unwrap();
        assert!(t.render(&json!({})).is_err());
    }

    #[test]
    fn repeated_sequences_are_bounded() {
        // Found by the chat_template fuzz target: `seq * n` made a lazy sequence of any length
        // (the length overflowed usize, a panic; or rendering it wrote without end). Since
        // minijinja 3.1 a repeat past 10^8 items is an error.
        let ctx = json!({"messages": [{"role": "user", "content": "hi"}]});
        for src in [
            "{{ 7777777 * messages * 77779553888888 }}",
            "{{ messages * 1000000000000 }}",
            "{{ ((messages * 99999999) * 99999999) | length }}",
        ] {
            let t = ChatTemplate::new(src).unwrap();
            let err = t.render(&ctx).unwrap_err().to_string();
            assert!(err.contains("too large"), "{src}: {err}");
        }
        let t = ChatTemplate::new("{{ 'ab' * 10000000000 }}").unwrap();
        assert!(t.render(&ctx).is_err(), "a string repeat is bounded too");
        let t = ChatTemplate::new("{{ (messages * 3) | length }}").unwrap();
        assert_eq!(t.render(&ctx).unwrap(), "3");
    }
}
