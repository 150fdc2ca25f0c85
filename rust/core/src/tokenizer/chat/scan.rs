//! A lexical pass over a chat template before minijinja parses it.
//!
//! minijinja's parser bounds bracket and block nesting (150 levels) but not the chains a
//! single tag can hold: `not not not … x`, `-(-(-…`, `1+1+…`, `x|upper|upper…`, `x.a.a.a…`.
//! Each operator adds one level to the expression tree, and the parser, the constant folder
//! (`Expr::as_const`), the code generator, the tree's `Drop` and our own `guard` walker all
//! recurse on that tree: 40,000 `not`s run the stack out and kill the process. So before
//! parsing, the template is split into tokens with minijinja's own lexer (which knows string
//! literals, `{# #}` comments and `{% raw %}` blocks exactly as the parser will see them) and
//! every `{{ }}` / `{% %}` tag may hold at most [`MAX_TAG_OPERATORS`] tokens that nest an
//! expression. The deepest tree a tag can then build is that many levels (plus the parser's
//! own bracket limit), a few hundred KB of stack at most in a debug build.

use minijinja::machinery::{self, Token};
use minijinja::syntax::SyntaxConfig;

use crate::{Error, Result};

/// The longest chat template accepted, in bytes. Real ones are 1–15 KB (Llama 3.1 with its
/// tool instructions is about 5 KB, Qwen2.5 about 2.5 KB, Mistral's v7 templates under 8 KB);
/// a megabyte leaves room for templates that inline long system prompts.
pub(super) const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// The most expression-nesting tokens (operators, filters, tests, attribute and item accesses,
/// calls, opening brackets, `not` / `and` / `or` / `in` / `is` / `if`) one tag may hold. The
/// busiest tags of real templates hold 10–30 (Qwen2.5's
/// `{%- if (message.role == "user") or (message.role == "system" and not loop.first) or … %}`
/// has 24).
pub(super) const MAX_TAG_OPERATORS: usize = 256;

fn nests(token: &Token<'_>) -> bool {
    match token {
        Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::FloorDiv
        | Token::Pow
        | Token::Mod
        | Token::Dot
        | Token::Tilde
        | Token::Pipe
        | Token::Eq
        | Token::Ne
        | Token::Gt
        | Token::Gte
        | Token::Lt
        | Token::Lte
        | Token::BracketOpen
        | Token::ParenOpen
        | Token::BraceOpen => true,
        Token::Ident(word) => matches!(*word, "not" | "and" | "or" | "in" | "is" | "if"),
        _ => false,
    }
}

/// Refuses a template longer than [`MAX_TEMPLATE_BYTES`] or with a tag holding more than
/// [`MAX_TAG_OPERATORS`] nesting tokens. Linear in the template's length, no recursion.
pub(super) fn check_source(source: &str, syntax: &SyntaxConfig) -> Result<()> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(Error::format(
            "chat template",
            format!(
                "the template is {} bytes long; at most {MAX_TEMPLATE_BYTES} are accepted",
                source.len()
            ),
        ));
    }
    let mut count = 0usize;
    let mut line = 1usize;
    for item in machinery::tokenize(source, false, syntax.clone()) {
        let (token, span) = match item {
            Ok(t) => t,
            // A lexing error: the parser reports it with its line.
            Err(_) => return Ok(()),
        };
        match token {
            Token::VariableStart | Token::BlockStart => {
                count = 0;
                line = span.start_line as usize;
            }
            t if nests(&t) => {
                count += 1;
                if count > MAX_TAG_OPERATORS {
                    return Err(Error::format(
                        "chat template",
                        format!(
                            "the tag starting on line {line} chains more than \
                             {MAX_TAG_OPERATORS} operators, filters or attribute accesses \
                             (expressions nested this deep are refused)"
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ChatTemplate;
    use super::*;

    /// Each shape that ran the stack out, `n` times inside one tag.
    fn shapes(n: usize) -> Vec<(&'static str, String)> {
        vec![
            ("not", format!("{{{{ {}true }}}}", "not ".repeat(n))),
            ("neg", format!("{{{{ {}1 }}}}", "-".repeat(n))),
            ("add", format!("{{{{ 1{} }}}}", "+1".repeat(n))),
            ("var add", format!("{{{{ x{} }}}}", "+1".repeat(n))),
            ("tilde", format!("{{{{ 'a'{} }}}}", "~'a'".repeat(n))),
            ("and", format!("{{{{ true{} }}}}", " and true".repeat(n))),
            ("filter", format!("{{{{ 'a'{} }}}}", "|upper".repeat(n))),
            ("attr", format!("{{{{ x{} }}}}", ".x".repeat(n))),
            ("item", format!("{{{{ x{} }}}}", "[0]".repeat(n))),
            ("call", format!("{{{{ x{} }}}}", "()".repeat(n))),
            ("pow", format!("{{{{ 2{} }}}}", "**1".repeat(n))),
            ("cond", format!("{{{{ 1{} }}}}", " if x else 1".repeat(n))),
            (
                "set",
                format!("{{% set y = x{} %}}{{{{ y }}}}", ".a".repeat(n)),
            ),
        ]
    }

    /// Runs on a thread with a 1 MiB stack (the default for a Rust thread), so the shapes at the limit
    /// are shown to fit with room to spare even in a debug build.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("no panic");
    }

    #[test]
    fn chains_at_the_limit_compile_and_past_it_are_refused() {
        on_small_stack(|| {
            for (name, src) in shapes(MAX_TAG_OPERATORS) {
                assert!(ChatTemplate::new(&src).is_ok(), "{name} at the limit");
            }
        });
        for (name, src) in shapes(MAX_TAG_OPERATORS + 2) {
            let err = ChatTemplate::new(&src).expect_err(name).to_string();
            assert!(err.contains("chains more than 256"), "{name}: {err}");
        }
        // The reproducers of the issue: tens of thousands, refused quickly.
        for (name, src) in shapes(100_000) {
            let err = ChatTemplate::new(&src).expect_err(name).to_string();
            assert!(
                err.contains("line 1 chains") || err.contains("bytes long"),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn strings_comments_and_raw_blocks_do_not_count() {
        let ops = "not -+|.".repeat(MAX_TAG_OPERATORS);
        for src in [
            format!("{{{{ '{ops}' }}}}"),
            format!("{{{{ \"{ops}\" }}}}"),
            format!("{{# {ops} #}}x"),
            format!("{{% raw %}}{{{{ {ops} }}}}{{% endraw %}}"),
            format!("{ops}{{{{ 1 }}}}"),
        ] {
            ChatTemplate::new(&src).expect("no nesting");
        }
        // Counts restart at each tag.
        let tag = format!("{{{{ x{} }}}}", ".a".repeat(MAX_TAG_OPERATORS));
        ChatTemplate::new(&tag.repeat(20)).expect("each tag at the limit");
        // A tag on a later line is named.
        let src = format!(
            "a\n{{{{ x }}}}\n{{% if x{} %}}{{% endif %}}",
            ".a".repeat(2000)
        );
        let err = ChatTemplate::new(&src).expect_err("past").to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn template_length_is_bounded() {
        let at = "x".repeat(MAX_TEMPLATE_BYTES);
        ChatTemplate::new(&at).expect("at the limit");
        let err = ChatTemplate::new(&format!("{at}x"))
            .expect_err("past")
            .to_string();
        assert!(err.contains("at most 1048576"), "{err}");
    }
}
