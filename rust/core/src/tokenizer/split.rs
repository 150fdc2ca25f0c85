//! Pre-tokenization: cutting text into the pieces that BPE encodes one at a time.
//!
//! A split pattern comes from the tokenizer file. Patterns that ferrolm recognises run on a
//! hand-written splitter that is equivalent to the regular expression (and several times faster
//! than any regex engine on it); any other pattern runs on the `regex` crate, whose matching is
//! linear in the input. Patterns that need look-around or possessive quantifiers, which a
//! linear-time engine cannot run, are rejected with [`Error::Unsupported`] naming the pattern,
//! never approximated.
//!
//! Semantics are tiktoken's: the pieces are the pattern's successive leftmost-first matches;
//! text between two matches (if the pattern can skip any) is not encoded.

use crate::tokenizer::unicode::{class_at, CharClass};
use crate::{Error, Result};

/// GPT-2's split pattern, as tiktoken writes it.
pub const GPT2_PATTERN: &str =
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// GPT-2's split pattern, as Hugging Face's tokenizer.json and the original encoder.py write it.
pub const GPT2_PATTERN_HF: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// GPT-2's split pattern as tiktoken 0.7+ writes it (possessive, `\s++$`): the same pieces.
pub const GPT2_PATTERN_POSSESSIVE: &str =
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s";
/// cl100k_base's split pattern (GPT-3.5 / GPT-4) as tiktoken 0.7+ writes it.
pub const CL100K_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";
/// [`CL100K_PATTERN`] as a `tokenizer.json` must write it: Oniguruma (Hugging Face
/// `tokenizers`) reads `\p{N}{1,3}+` as `(?:\p{N}{1,3})+`, so the digits' interval is written
/// without its `+` (at the end of its alternative, possessive and greedy match the same).
pub const CL100K_PATTERN_ONIG: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";
/// cl100k_base's split pattern as earlier tiktoken versions write it (no `\s++$`).
pub const CL100K_PATTERN_OLD: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
/// Llama 3's split pattern, as its tokenizer.json writes it.
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A compiled split pattern.
#[derive(Debug, Clone)]
pub enum Splitter {
    /// [`GPT2_PATTERN`] (and its other spellings), hand-written.
    Gpt2,
    /// The cl100k family ([`CL100K_PATTERN`], [`CL100K_PATTERN_OLD`], [`LLAMA3_PATTERN`]),
    /// hand-written. `ws_to_end`: a run of white space that reaches the end of the text is one
    /// piece (`\s++$`, in tiktoken 0.7+'s cl100k only).
    Cl100k { ws_to_end: bool },
    /// Any other pattern the `regex` crate accepts.
    Regex(Box<regex::Regex>),
    /// A pattern whose only look-around is the alternative `\s+(?!\S)` followed by the
    /// alternative `\s+` or `\s` (o200k, Qwen 2, DeepSeek and most tokenizer.json files written
    /// after GPT-2): see [`LookaheadWs`].
    LookaheadWs(Box<LookaheadWs>),
}

/// A split pattern with the alternative `\s+(?!\S)`, run in linear time.
///
/// The look-ahead is taken out: `fast` is the pattern with `\s+` in its place, and `marked`
/// the same with that alternative in a named group. Where the original pattern reaches that
/// alternative, the white-space run it takes is maximal; the look-ahead then either holds (the
/// run ends the text) or makes the backtracking engine give back the run's last character,
/// which is exactly what happens here after the match. A one-character run that the
/// look-ahead rejects falls to the next alternative (`\s+` or `\s`), which matches that same
/// character: the pieces are the original pattern's, and the match start positions too.
#[derive(Debug, Clone)]
pub struct LookaheadWs {
    original: String,
    fast: regex::Regex,
    marked: regex::Regex,
}

/// The name of the group that marks the rewritten `\s+(?!\S)` alternative.
const WS_GROUP: &str = "ferrolm_ws_lookahead";

impl LookaheadWs {
    /// The rewritten patterns (`fast`, `marked`) when `pattern` has the shape this handles.
    fn rewrite(pattern: &str) -> Option<(String, String)> {
        let alts = top_level_alternatives(pattern)?;
        let k = alts.iter().position(|a| *a == r"\s+(?!\S)")?;
        if !matches!(alts.get(k + 1), Some(&(r"\s+" | r"\s"))) {
            return None;
        }
        let with = |replacement: &str| {
            let mut v: Vec<&str> = alts.clone();
            v[k] = replacement;
            v.join("|")
        };
        let marked = format!(r"(?P<{WS_GROUP}>\s+)");
        Some((with(r"\s+"), with(&marked)))
    }

    fn split(&self, text: &str, mut emit: impl FnMut(usize, usize)) {
        let n = text.len();
        let mut pos = 0;
        while pos <= n {
            let Some(m) = self.fast.find_at(text, pos) else {
                break;
            };
            let (start, mut end) = (m.start(), m.end());
            if start == end {
                // An empty match: nothing to encode; step over one character.
                pos = end + text[end..].chars().next().map_or(1, char::len_utf8);
                continue;
            }
            if end < n {
                let piece = &text[start..end];
                let mut chars = piece.chars();
                let last = chars.next_back();
                // Only a white-space match of two or more characters can be the rewritten
                // alternative giving back its last character.
                if chars.next().is_some() && piece.chars().all(char::is_whitespace) {
                    let from_ws_alt = self
                        .marked
                        .captures_at(text, start)
                        .and_then(|c| c.name(WS_GROUP))
                        .is_some_and(|g| g.start() == start);
                    if from_ws_alt {
                        end -= last.map_or(0, char::len_utf8);
                    }
                }
            }
            emit(start, end);
            pos = end;
        }
    }
}

/// The alternatives of `pattern` at the top level (outside groups and classes), or `None` if
/// its brackets do not balance.
fn top_level_alternatives(pattern: &str) -> Option<Vec<&str>> {
    let b = pattern.as_bytes();
    let mut out = Vec::new();
    let (mut depth, mut class_depth, mut last, mut i) = (0_i32, 0_i32, 0, 0);
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' => {
                class_depth += 1;
                // `[]...]` and `[^]...]`: a `]` first in a class is a literal.
                if b.get(i + 1) == Some(&b'^') {
                    i += 1;
                }
                if b.get(i + 1) == Some(&b']') {
                    i += 1;
                }
            }
            b']' if class_depth > 0 => class_depth -= 1,
            b'(' if class_depth == 0 => depth += 1,
            b')' if class_depth == 0 => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            b'|' if class_depth == 0 && depth == 0 => {
                out.push(&pattern[last..i]);
                last = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 || class_depth != 0 {
        return None;
    }
    out.push(&pattern[last..]);
    Some(out)
}

impl Splitter {
    /// Compiles `pattern`, choosing the hand-written splitter when one is equivalent.
    pub fn new(pattern: &str) -> Result<Self> {
        if [GPT2_PATTERN, GPT2_PATTERN_HF, GPT2_PATTERN_POSSESSIVE].contains(&pattern) {
            return Ok(Splitter::Gpt2);
        }
        if pattern == CL100K_PATTERN || pattern == CL100K_PATTERN_ONIG {
            return Ok(Splitter::Cl100k { ws_to_end: true });
        }
        if pattern == CL100K_PATTERN_OLD || pattern == LLAMA3_PATTERN {
            return Ok(Splitter::Cl100k { ws_to_end: false });
        }
        if let Some((fast, marked)) = LookaheadWs::rewrite(pattern) {
            if !has_possessive_quantifier(&fast) {
                if let (Ok(fast), Ok(marked)) = (compile(&fast), compile(&marked)) {
                    return Ok(Splitter::LookaheadWs(Box::new(LookaheadWs {
                        original: pattern.to_owned(),
                        fast,
                        marked,
                    })));
                }
            }
        }
        if has_possessive_quantifier(pattern) {
            return Err(Error::Unsupported(format!(
                "split pattern {pattern:?}: it uses possessive repetition (`++`, `*+`, `?+`), \
                 which a linear-time engine cannot run"
            )));
        }
        let re = compile(pattern).map_err(|e| {
            let why = match &e {
                regex::Error::Syntax(s)
                    if s.contains("look-around") || s.contains("repetition operator") =>
                {
                    "it needs look-around or possessive repetition, which a linear-time \
                         engine cannot run"
                        .to_owned()
                }
                regex::Error::Syntax(s) => s.lines().last().unwrap_or("").trim().to_owned(),
                other => other.to_string(),
            };
            Error::Unsupported(format!("split pattern {pattern:?}: {why}"))
        })?;
        Ok(Splitter::Regex(Box::new(re)))
    }

    /// The pattern this splitter implements.
    pub fn pattern(&self) -> &str {
        match self {
            Splitter::Gpt2 => GPT2_PATTERN,
            Splitter::Cl100k { ws_to_end: true } => CL100K_PATTERN,
            Splitter::Cl100k { ws_to_end: false } => CL100K_PATTERN_OLD,
            Splitter::Regex(re) => re.as_str(),
            Splitter::LookaheadWs(l) => &l.original,
        }
    }

    /// Calls `emit(start, end)` with the byte range of each piece of `text`, in order.
    #[inline]
    pub fn split(&self, text: &str, emit: impl FnMut(usize, usize)) {
        match self {
            Splitter::Gpt2 => split_gpt2(text, emit),
            Splitter::Cl100k { ws_to_end } => split_cl100k(text, *ws_to_end, emit),
            Splitter::LookaheadWs(l) => l.split(text, emit),
            Splitter::Regex(re) => {
                let mut emit = emit;
                for m in re.find_iter(text) {
                    if m.start() < m.end() {
                        emit(m.start(), m.end());
                    }
                }
            }
        }
    }
}

fn compile(pattern: &str) -> std::result::Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(64 << 20)
        .build()
}

/// True when `pattern` has a possessive quantifier. The `regex` crate would read `x++` as
/// `(x+)+`, which matches differently, so such patterns must be refused rather than compiled.
fn has_possessive_quantifier(pattern: &str) -> bool {
    !possessive_quantifiers(pattern).is_empty()
}

/// True when `pattern` has an interval followed by `+` (`x{1,3}+`): possessive for tiktoken's
/// engine, but a repeated interval (`(?:x{1,3})+`) for Oniguruma, which Hugging Face
/// `tokenizers` runs `Split` patterns on.
pub fn has_interval_plus(pattern: &str) -> bool {
    possessive_quantifiers(pattern).contains(&b'}')
}

/// The quantifier characters (`*`, `+`, `?` or `}`) that a possessive `+` follows in
/// `pattern`, in order.
fn possessive_quantifiers(pattern: &str) -> Vec<u8> {
    let mut found = Vec::new();
    let b = pattern.as_bytes();
    let mut i = 0;
    let mut in_class = false;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                // `\p{..}`, `\P{..}`, `\x{..}`, `\u{..}`: skip the braces with the escape.
                if matches!(b.get(i + 1), Some(b'p' | b'P' | b'x' | b'u'))
                    && b.get(i + 2) == Some(&b'{')
                {
                    while i < b.len() && b[i] != b'}' {
                        i += 1;
                    }
                } else {
                    i += 1;
                }
            }
            b'[' => in_class = true,
            b']' => in_class = false,
            // `(?+` is not a quantifier; anything else quantified then `+` is possessive.
            b'*' | b'+' | b'?' | b'}'
                if !in_class
                    && b.get(i + 1) == Some(&b'+')
                    && !(b[i] == b'?' && i > 0 && b[i - 1] == b'(') =>
            {
                found.push(b[i]);
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The end of the run of `class` characters starting at byte `i`.
#[inline]
fn run_end(b: &[u8], mut i: usize, class: CharClass) -> usize {
    while i < b.len() {
        let (c, len) = class_at(b, i);
        if c != class {
            break;
        }
        i += len;
    }
    i
}

/// The length of a contraction (`'s 'd 'm 't 'll 've 're`) starting at byte `i`, if any.
#[inline]
fn contraction_len(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i + 1)? {
        b's' | b'd' | b'm' | b't' => Some(2),
        b'l' if b.get(i + 2) == Some(&b'l') => Some(3),
        b'v' | b'r' if b.get(i + 2) == Some(&b'e') => Some(3),
        _ => None,
    }
}

/// [`GPT2_PATTERN`] by hand. At each position the alternatives are tried in the pattern's
/// order; each branch below says which one it is.
fn split_gpt2(text: &str, mut emit: impl FnMut(usize, usize)) {
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0;
    while i < n {
        let start = i;
        // `'(?:[sdmt]|ll|ve|re)`
        if b[i] == b'\'' {
            if let Some(l) = contraction_len(b, i) {
                i += l;
                emit(start, i);
                continue;
            }
        }
        let (class, len) = class_at(b, i);
        i = match class {
            // `\p{L}+`, `\p{N}+`, `[^\s\p{L}\p{N}]+` without the leading space
            CharClass::Letter | CharClass::Number | CharClass::Other => run_end(b, i + len, class),
            CharClass::Space => {
                let next = if i + 1 < n && b[i] == b' ' {
                    Some(class_at(b, i + 1).0)
                } else {
                    None
                };
                match next {
                    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+` with the space
                    Some(c) if c != CharClass::Space => run_end(b, i + 1, c),
                    _ => {
                        // `\s+(?!\S)`: the whole run at the end of the text, else the run less
                        // its last character (which then starts the next piece); `\s+` when
                        // the run is a single character followed by a non-space.
                        let mut j = i + len;
                        let mut last = len;
                        while j < n {
                            let (c2, l2) = class_at(b, j);
                            if c2 != CharClass::Space {
                                break;
                            }
                            j += l2;
                            last = l2;
                        }
                        if j == n || j - i == last {
                            j
                        } else {
                            j - last
                        }
                    }
                }
            }
        };
        emit(start, i);
    }
}

/// The length of a case-insensitive contraction (`'s 'd 'm 't 'll 've 're`, any case).
#[inline]
fn contraction_len_ci(b: &[u8], i: usize) -> Option<usize> {
    let lower = |k: usize| b.get(i + k).map(u8::to_ascii_lowercase);
    match lower(1)? {
        b's' | b'd' | b'm' | b't' => Some(2),
        b'l' if lower(2) == Some(b'l') => Some(3),
        b'v' | b'r' if lower(2) == Some(b'e') => Some(3),
        _ => None,
    }
}

#[inline]
fn is_newline(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// The cl100k family by hand. At each position the alternatives are tried in the pattern's
/// order; each branch says which one it is.
fn split_cl100k(text: &str, ws_to_end: bool, mut emit: impl FnMut(usize, usize)) {
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0;
    while i < n {
        let start = i;
        // `'(?i:[sdmt]|ll|ve|re)`
        if b[i] == b'\'' {
            if let Some(l) = contraction_len_ci(b, i) {
                i += l;
                emit(start, i);
                continue;
            }
        }
        let (class, len) = class_at(b, i);
        let next = if i + len < n {
            Some(class_at(b, i + len).0)
        } else {
            None
        };
        i = match class {
            // `[^\r\n\p{L}\p{N}]?\p{L}+` without the optional character
            CharClass::Letter => run_end(b, i + len, CharClass::Letter),
            // `\p{N}{1,3}`
            CharClass::Number => {
                let mut j = i + len;
                for _ in 0..2 {
                    if j < n {
                        let (c, l) = class_at(b, j);
                        if c == CharClass::Number {
                            j += l;
                            continue;
                        }
                    }
                    break;
                }
                j
            }
            // `[^\r\n\p{L}\p{N}]?\p{L}+` with the optional character: any character that is
            // not a letter, digit, CR or LF, then letters
            _ if next == Some(CharClass::Letter) && !is_newline(b[i]) => {
                run_end(b, i + len, CharClass::Letter)
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
            CharClass::Other => newlines_end(b, run_end(b, i + len, CharClass::Other)),
            CharClass::Space if b[i] == b' ' && next == Some(CharClass::Other) => {
                newlines_end(b, run_end(b, i + 1, CharClass::Other))
            }
            CharClass::Space => {
                // The white-space run and the end of its last CR/LF.
                let mut j = i;
                let mut last = len;
                let mut after_newline = None;
                while j < n {
                    let (c, l) = class_at(b, j);
                    if c != CharClass::Space {
                        break;
                    }
                    if is_newline(b[j]) {
                        after_newline = Some(j + 1);
                    }
                    last = l;
                    j += l;
                }
                if ws_to_end && j == n {
                    // `\s++$`
                    j
                } else if let Some(end) = after_newline {
                    // `\s*[\r\n]+`: greedy white space, given back until it ends on a newline
                    end
                } else if j == n || j - i == last {
                    // `\s+(?!\S)` reaching the end, or `\s+` / `\s` for a single character
                    j
                } else {
                    // `\s+(?!\S)`: all but the last character, which starts the next piece
                    j - last
                }
            }
        };
        emit(start, i);
    }
}

/// The end of a run of CR / LF bytes starting at `i`.
#[inline]
fn newlines_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_newline(b[i]) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces<'a>(s: &Splitter, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        s.split(text, |a, b| out.push(&text[a..b]));
        out
    }

    /// The hand-written splitter against the pattern run by a backtracking-free emulation: the
    /// `regex` crate cannot run `(?!\S)`, so the oracle applies the same pattern without it and
    /// gives back the last whitespace character where the look-ahead would have failed.
    fn oracle(text: &str) -> Vec<&str> {
        let re = regex::Regex::new(
            r"^(?:'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+)",
        )
        .unwrap();
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            let m = re.find(&text[i..]).unwrap();
            let mut end = i + m.end();
            let piece = &text[i..end];
            if piece.chars().all(char::is_whitespace) && end < text.len() {
                let last = piece.chars().next_back().unwrap().len_utf8();
                if piece.len() > last {
                    end -= last;
                }
            }
            out.push(&text[i..end]);
            i = end;
        }
        out
    }

    #[test]
    fn gpt2_examples() {
        let s = Splitter::new(GPT2_PATTERN).unwrap();
        assert_eq!(
            pieces(&s, "Hello world! It's 2024,   ok?\n\n  Yes"),
            vec![
                "Hello", " world", "!", " It", "'s", " 2024", ",", "  ", " ok", "?", "\n\n ",
                " Yes"
            ]
        );
        assert_eq!(pieces(&s, "  \nfoo"), vec!["  ", "\n", "foo"]);
        assert_eq!(
            pieces(&s, "x'''s 'll'LL"),
            vec!["x", "'''", "s", " '", "ll", "'", "LL"]
        );
        assert_eq!(pieces(&s, "end   "), vec!["end", "   "]);
        assert_eq!(pieces(&s, ""), Vec::<&str>::new());
        assert_eq!(
            pieces(&s, "中文 テスト ½Ⅻ 😀😀"),
            vec!["中文", " テスト", " ½Ⅻ", " 😀😀"]
        );
    }

    #[test]
    fn gpt2_agrees_with_the_oracle_on_awkward_text() {
        let s = Splitter::new(GPT2_PATTERN_HF).unwrap();
        assert!(matches!(s, Splitter::Gpt2));
        let samples = [
            "a  b   c\t\td \n e\r\n\r\nf\u{00A0}\u{00A0}g \u{3000}h",
            "It's we'll they've I'd you're 'tis 'S ''' ' ",
            "x1y2 z33 4five ...!!! ??a  ,,b",
            "emoji 👩‍👩‍👧 mixed中文English123漢字 \u{0301}e\u{0301}",
            "\n\n\n",
            " ",
            "  ",
            "tail space ",
            "tabs\t",
        ];
        for t in samples {
            assert_eq!(pieces(&s, t), oracle(t), "{t:?}");
        }
    }

    #[test]
    fn other_patterns_run_on_regex_or_are_rejected() {
        let s = Splitter::new(r"\w+|[^\w\s]+").unwrap();
        assert!(matches!(s, Splitter::Regex(_)));
        assert_eq!(pieces(&s, "ab, cd"), vec!["ab", ",", "cd"]);
        let err = Splitter::new(r"\s+(?!\S)|x").unwrap_err().to_string();
        assert!(err.contains("look-around"), "{err}");
        let err = Splitter::new(r"a(?=b)|\s+(?!\S)|\s+")
            .unwrap_err()
            .to_string();
        assert!(err.contains("look-around"), "{err}");
        let err = Splitter::new(r"\p{L}++").unwrap_err().to_string();
        assert!(err.starts_with("unsupported split pattern"), "{err}");
        assert!(Splitter::new("(unclosed").is_err());
        assert!(has_possessive_quantifier(r"a*+|b"));
        assert!(has_possessive_quantifier(r"\p{N}{1,3}+"));
        assert!(!has_possessive_quantifier(r"\p{L}+|[+*?]+|\++| ?\p{N}+"));
        assert!(has_interval_plus(CL100K_PATTERN));
        assert!(!has_interval_plus(CL100K_PATTERN_ONIG));
        assert!(!has_interval_plus(CL100K_PATTERN_OLD));
        assert!(!has_interval_plus(r"\p{L}++|[}+]|x{2}"));
        assert!(matches!(
            Splitter::new(CL100K_PATTERN_ONIG).unwrap(),
            Splitter::Cl100k { ws_to_end: true }
        ));
    }

    /// The look-ahead rewrite, forced onto a pattern that also has a hand-written splitter.
    fn generic(pattern: &str) -> Splitter {
        let (fast, marked) = LookaheadWs::rewrite(pattern).unwrap();
        Splitter::LookaheadWs(Box::new(LookaheadWs {
            original: pattern.to_owned(),
            fast: compile(&fast).unwrap(),
            marked: compile(&marked).unwrap(),
        }))
    }

    const AWKWARD: [&str; 12] = [
        "a  b   c\t\td \n e\r\n\r\nf\u{00A0}\u{00A0}g \u{3000}h",
        "It's we'll they've I'd you're 'tis 'S ''' ' ",
        "x1y2 z33 4five ...!!! ??a  ,,b 12345678",
        "emoji 👩‍👩‍👧 mixed中文English123漢字 \u{0301}e\u{0301}",
        "\n\n\n",
        " ",
        "  ",
        "tail space ",
        "tabs\t",
        "  \n  x\r\n \t\n\n  y   ",
        "a\u{2028}\u{2028}b \u{85} c",
        "",
    ];

    #[test]
    fn the_lookahead_rewrite_agrees_with_the_hand_written_splitters() {
        for (pattern, hand) in [
            (GPT2_PATTERN, Splitter::Gpt2),
            (GPT2_PATTERN_HF, Splitter::Gpt2),
            (LLAMA3_PATTERN, Splitter::Cl100k { ws_to_end: false }),
        ] {
            let g = generic(pattern);
            assert_eq!(g.pattern(), pattern);
            for t in AWKWARD {
                assert_eq!(pieces(&g, t), pieces(&hand, t), "{pattern:?} on {t:?}");
            }
        }
    }

    #[test]
    fn o200k_runs_on_the_lookahead_rewrite() {
        let o200k = [
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"\p{N}{1,3}",
            r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
            r"\s*[\r\n]+",
            r"\s+(?!\S)",
            r"\s+",
        ]
        .join("|");
        let s = Splitter::new(&o200k).unwrap();
        assert!(matches!(s, Splitter::LookaheadWs(_)));
        assert_eq!(
            pieces(&s, "HelloWorld don't   stop\n\n  x"),
            vec!["Hello", "World", " don't", "  ", " stop", "\n\n", " ", " x"]
        );
        assert_eq!(pieces(&s, "end  "), vec!["end", "  "]);
    }

    #[test]
    fn top_level_alternatives_respect_groups_and_classes() {
        assert_eq!(
            top_level_alternatives(r"a(b|c)|[|\]]|\||x").unwrap(),
            vec!["a(b|c)", r"[|\]]", r"\|", "x"]
        );
        assert_eq!(
            top_level_alternatives(r"[]|]|y").unwrap(),
            vec!["[]|]", "y"]
        );
        assert!(top_level_alternatives("(a|b").is_none());
    }
}
