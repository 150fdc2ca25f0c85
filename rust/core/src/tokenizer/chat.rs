//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template` in a GGUF file,
//! `chat_template` in `tokenizer_config.json`) rendered as `transformers`' `apply_chat_template`
//! renders it — blocks trimmed (`trim_blocks`, `lstrip_blocks`), Python's string and dict
//! methods (`.strip()`, `.items()`, ...), `raise_exception(message)`, and a `tojson` that
//! writes non-ASCII and HTML characters as they are.

mod guard;
mod json;
mod scan;

use std::fmt::Write as _;

use minijinja::{machinery, Environment, Error as JinjaError, ErrorKind, State, Value};

use crate::{Error, Result};

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

const NAME: &str = "chat_template";

/// The work one render may do, in minijinja's fuel: one per instruction, one per 64 bytes of
/// data made or visited, one per item a value walk visits (see `guard`). A render needs about a
/// fifth of a fuel per byte of conversation (a Llama-3.1-style template with four tools used
/// 806k on a 4 MB conversation of 1,000 messages; SmolLM2's 635k), so this renders about 10 MB;
/// and it bounds what a crafted template (a template inside a GGUF file is untrusted text) can
/// make one render cost: about 128 MB of data work, a fraction of a second.
pub const FUEL: u64 = 2_000_000;

/// The longest message `raise_exception` keeps.
const MAX_EXCEPTION_MESSAGE: usize = 4096;

/// A `fmt::Write` that keeps the first `limit` bytes and then stops the formatting.
struct Capped {
    text: String,
    limit: usize,
}

impl std::fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.limit.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text.push_str(&s[..cut]);
        Err(std::fmt::Error)
    }
}

fn raise_exception(state: &State, message: Value) -> std::result::Result<Value, JinjaError> {
    guard::charge_deep(state, &message)?;
    let mut text = Capped {
        text: String::new(),
        limit: MAX_EXCEPTION_MESSAGE,
    };
    if write!(text, "{message}").is_err() {
        text.text.push_str("...");
    }
    Err(JinjaError::new(ErrorKind::InvalidOperation, text.text))
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error names the line.
    pub fn new(source: &str) -> Result<Self> {
        Self::with_fuel(source, FUEL)
    }

    /// Compiles `source` with a different bound on the work of one render, in fuel (`new`
    /// uses [`FUEL`]); time and memory per render grow linearly with it.
    pub fn with_fuel(source: &str, fuel: u64) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Internal(e.to_string()))?;
        scan::check_source(source, &syntax)?;
        let ast = machinery::parse(source, NAME, syntax.clone())
            .map_err(|e| Error::format("chat template", e.to_string()))?;
        guard::check_constants(&ast)?;
        env.set_syntax(syntax);
        env.set_fuel(Some(fuel));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", json::tojson);
        guard::register(&mut env);
        guard::register_namespace(&mut env);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| Error::format("chat template", e.to_string()))?;
        let template = ChatTemplate { env };
        {
            let tmpl = template.template()?;
            let compiled = machinery::get_compiled_template(&tmpl);
            if !compiled.blocks.is_empty() {
                return Err(Error::format(
                    "chat template",
                    "`{% block %}` is not supported in chat templates",
                ));
            }
            guard::guarded(&compiled.instructions)?;
        }
        Ok(template)
    }

    fn template(&self) -> Result<minijinja::Template<'_, '_>> {
        self.env
            .get_template(NAME)
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Renders the template with `context` (a JSON object: `messages`, `add_generation_prompt`,
    /// `bos_token`, `eos_token`, `tools`, ...).
    pub fn render(&self, context: &serde_json::Value) -> Result<String> {
        let tmpl = self.template()?;
        let compiled = machinery::get_compiled_template(&tmpl);
        let instructions = guard::guarded(&compiled.instructions)?;
        let mut text = String::with_capacity(compiled.buffer_size_hint);
        let mut out = machinery::make_string_output(&mut text);
        let root = Value::from(minijinja::value::Serde(context));
        guard::with_namespaces_cleared(&self.env, || {
            machinery::eval(
                &self.env,
                &instructions,
                root,
                &compiled.blocks,
                &mut out,
                compiled.initial_auto_escape.clone(),
            )
            .map(|_| ())
        })
        .map_err(|e| {
            let mut msg = e.to_string();
            if let Some(detail) = e.detail() {
                if !msg.contains(detail) {
                    msg = format!("{msg}: {detail}");
                }
            }
            Error::invalid(format!("chat template: {msg}"))
        })?;
        drop(out);
        Ok(text)
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

    /// Renders `src` and expects minijinja's fuel to stop it. The tests run with a twentieth of
    /// the fuel (so that a debug build runs out quickly); the fuzz target uses all of it.
    const TEST_FUEL: u64 = FUEL / 20;

    fn out_of_fuel(src: &str) {
        let ctx = json!({"messages": [{"role": "user", "content": "hi"}]});
        let t = ChatTemplate::with_fuel(src, TEST_FUEL).unwrap_or_else(|e| panic!("{src}: {e}"));
        let err = t.render(&ctx).unwrap_err().to_string();
        // The guard's message: the walk was refused before it happened.
        assert!(err.contains("too large to walk"), "{src}: {err}");
    }

    #[test]
    fn walking_large_values_is_charged_before_it_happens() {
        // Found by the chat_template fuzz target: a lazy repeat of 75 million items converted
        // to a string took over 10 s before the engine charged anything. Each of these walked
        // a value of 10^8 items or more (or a tree of 2^60 leaves built from 120 slots).
        let big = "{% set b = ['x'] * 99999999 %}";
        for op in [
            "{{ B ~ 5 }}",
            "{{ B }}",
            "{{ B | tojson }}",
            "{{ B | string }}",
            "{{ B | pprint }}",
            "{{ B | join }}",
            "{{ B | unique | length }}",
            "{{ B | sort | length }}",
            "{{ '%s' | format(B) }}",
            "{{ B == B }}",
            "{{ 'y' in B }}",
            "{{ B.count('x') }}",
            "{{ {B: 1} }}",
            "{{ raise_exception(B) }}",
        ] {
            out_of_fuel(&format!("{big}{}", op.replace('B', "b")));
        }
        let tree = "{% set ns = namespace(l=['ab']) %}{% for i in range(60) %}\
                    {% set ns.l = [ns.l, ns.l] %}{% endfor %}";
        for use_ in [
            "{{ ns.l }}",
            "{{ ns.l | tojson }}",
            "{{ ns.l ~ '' }}",
            "{{ ns.l == 1 }}",
        ] {
            out_of_fuel(&format!("{tree}{use_}"));
        }
        // Doubling with operators.
        out_of_fuel(
            "{% set ns = namespace(l=['ab']) %}{% for i in range(60) %}\
             {% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | length }}",
        );
        // (Strings doubling is refused by minijinja's own check before the concatenation.)
        let t = ChatTemplate::with_fuel(
            "{% set ns = namespace(s='ab') %}{% for i in range(60) %}\
             {% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            TEST_FUEL,
        )
        .unwrap();
        assert!(t
            .render(&json!({}))
            .unwrap_err()
            .to_string()
            .contains("out of fuel"));
        // Splitting a long string makes an item per piece.
        out_of_fuel("{{ ('a b' * 1000000).split() | length }}");
        out_of_fuel("{{ ('ab' * 1000000) | list | length }}");
        // Cheap questions about a large value stay cheap.
        let src = format!("{big}{{{{ b | length }}}} {{{{ b | first }}}}");
        let t = ChatTemplate::with_fuel(&src, TEST_FUEL).unwrap();
        assert_eq!(t.render(&json!({})).unwrap(), "99999999 x");
    }

    #[test]
    fn loop_changed_cannot_hold_the_loop() {
        let t =
            ChatTemplate::new("{% for x in [1, 2] %}{{ loop.changed(loop) }}{% endfor %}").unwrap();
        let err = t.render(&json!({})).unwrap_err().to_string();
        assert!(err.contains("loop.changed takes"), "{err}");
        let t =
            ChatTemplate::new("{% for x in [1, 1, 2] %}{{ loop.changed(x) }}{% endfor %}").unwrap();
        assert_eq!(t.render(&json!({})).unwrap(), "TrueFalseTrue");
    }

    #[test]
    fn constant_folding_cannot_walk_large_values() {
        // The compiler folds constant expressions, without fuel.
        for src in [
            "{{ ['x'] * 99999999 ~ 5 }}",
            "{{ (['a'] * 99999999) == (['a'] * 99999999) }}",
            "{{ 'a' in ['b'] * 99999999 }}",
            "{% if [1] * 99999999 + [2] < [3] %}{% endif %}",
        ] {
            let err = ChatTemplate::new(src).unwrap_err().to_string();
            assert!(err.contains("too large"), "{src}: {err}");
        }
        // Small constants still fold and render.
        let t = ChatTemplate::new("{{ ['x'] * 3 ~ 5 }}{{ 2 * 3 }}{{ 'ab' in 'cabd' }}").unwrap();
        assert_eq!(t.render(&json!({})).unwrap(), "['x', 'x', 'x']56True");
    }

    #[test]
    fn guarded_templates_keep_their_meaning() {
        // Loops, recursion, macros with callers, filters with keyword arguments, tests,
        // slices, chained comparisons and method calls run as before the guards were spliced.
        let src = "{% macro wrap(x) %}<{{ caller() }}|{{ x }}>{% endmacro %}\
                   {% for m in messages if m.role != 'system' %}\
                   {% call wrap(loop.index) %}{{ m.content | upper }}{% endcall %}{{ m.content[1:-1] }}\
                   {% endfor %}\
                   {% for x in [[1, [2]], [3]] recursive %}{{ x if x is number else loop(x) }}{% endfor %}\
                   {{ 1 < 2 < 3 }}{{ messages | selectattr('role', 'equalto', 'user') | list | length }}\
                   {{ messages[-1].get('content').split('c') | join('+') }}\
                   {{ {'b': 1, 'a': [1.5, none]} | tojson(indent=2) }}";
        let t = ChatTemplate::new(src).unwrap();
        let out = t
            .render(&json!({"messages": [
                {"role": "system", "content": "zzz"},
                {"role": "user", "content": "abcd"},
                {"role": "user", "content": "xcy"}]}))
            .unwrap();
        assert_eq!(
            out,
            "<ABCD|1>bc<XCY|2>c123True2x+y{\n  \"b\": 1,\n  \"a\": [\n    1.5,\n    null\n  ]\n}"
        );
    }
}
