//! `tojson` as transformers defines it for chat templates: Python's `json.dumps(x,
//! ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, written straight from the
//! template's values with a cap on the output, so a large `indent` cannot make it allocate
//! without bound.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error as JinjaError, ErrorKind, State, Value};

/// Deeper values than this are refused (the walk is recursive).
const MAX_DEPTH: usize = 256;

struct Options {
    /// The text of one indentation level; `None` writes everything on one line.
    indent: Option<String>,
    ensure_ascii: bool,
    sort_keys: bool,
    item_sep: String,
    key_sep: String,
}

fn invalid(msg: impl Into<std::borrow::Cow<'static, str>>) -> JinjaError {
    JinjaError::new(ErrorKind::InvalidOperation, msg)
}

fn options(indent: Option<Value>, kwargs: &Kwargs) -> Result<Options, JinjaError> {
    let indent = match kwargs.get::<Option<Value>>("indent")?.or(indent) {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(if let Some(s) = v.as_str() {
            s.to_owned()
        } else {
            let n = v
                .as_i64()
                .ok_or_else(|| invalid("tojson: indent must be an integer or a string"))?;
            // Python: `' ' * indent`; a negative indent is no spaces but still new lines.
            let n = usize::try_from(n.max(0)).unwrap_or(0);
            if n > 1 << 16 {
                return Err(invalid("tojson: indent is too large"));
            }
            " ".repeat(n)
        }),
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let (item_sep, key_sep) = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() => {
            let parts: Vec<Value> = v.try_iter()?.take(3).collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_owned(),
                    b.as_str().unwrap_or_default().to_owned(),
                ),
                _ => return Err(invalid("tojson: separators must be two strings")),
            }
        }
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    kwargs.assert_all_used()?;
    Ok(Options {
        indent,
        ensure_ascii,
        sort_keys,
        item_sep,
        key_sep,
    })
}

fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Python's `repr` writes it: the shortest digits that read back the same, in
/// positional notation for exponents -4 to 15 (`0.0001`, `1e+16`, `1.5e-05`, `2.0`).
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let fixed = format!("{f}");
        if fixed.contains('.') {
            fixed
        } else {
            fixed + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    }
}

/// A number as Python's `json.dumps` writes it.
fn write_number(out: &mut String, v: &Value) {
    match f64::try_from(v.clone()) {
        Ok(f) if !v.is_integer() => out.push_str(&python_float(f)),
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

struct Writer<'a> {
    state: &'a State<'a, 'a>,
    opts: &'a Options,
    out: String,
    /// Bytes the fuel left can pay for.
    limit: usize,
}

impl Writer<'_> {
    fn exhausted(&self) -> JinjaError {
        let remaining = self.state.fuel_levels().map_or(0, |(_, r)| r);
        let _ = self.state.consume_fuel(remaining.saturating_add(1));
        JinjaError::new(ErrorKind::OutOfFuel, "tojson: the output is too large")
    }

    fn check(&self) -> Result<(), JinjaError> {
        if self.out.len() > self.limit {
            return Err(self.exhausted());
        }
        Ok(())
    }

    fn newline(&mut self, level: usize) {
        if let Some(indent) = &self.opts.indent {
            self.out.push('\n');
            for _ in 0..level {
                self.out.push_str(indent);
            }
        }
    }

    fn key(&mut self, key: &Value) -> Result<(), JinjaError> {
        match key.kind() {
            ValueKind::String => write_str(
                &mut self.out,
                key.as_str().unwrap_or_default(),
                self.opts.ensure_ascii,
            ),
            ValueKind::Number => {
                let mut s = String::new();
                write_number(&mut s, key);
                write_str(&mut self.out, &s, false);
            }
            ValueKind::Bool => self.out.push_str(if key.is_true() {
                "\"true\""
            } else {
                "\"false\""
            }),
            ValueKind::None => self.out.push_str("\"null\""),
            other => {
                return Err(invalid(format!(
                    "tojson: keys must be strings, numbers, booleans or none, not {other}"
                )))
            }
        }
        Ok(())
    }

    fn value(&mut self, v: &Value, level: usize) -> Result<(), JinjaError> {
        if level > MAX_DEPTH {
            return Err(invalid("tojson: the value is nested too deeply"));
        }
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => write_number(&mut self.out, v),
            ValueKind::String => write_str(
                &mut self.out,
                v.as_str().unwrap_or_default(),
                self.opts.ensure_ascii,
            ),
            ValueKind::Bytes => {
                let bytes = v.as_bytes().unwrap_or_default();
                let items: Vec<Value> = bytes.iter().map(|&b| Value::from(b)).collect();
                self.value(&Value::from(items), level)?;
            }
            ValueKind::Seq | ValueKind::Iterable => {
                self.out.push('[');
                let mut first = true;
                for item in v.try_iter()? {
                    if !first {
                        self.out.push_str(&self.opts.item_sep);
                    }
                    first = false;
                    self.newline(level + 1);
                    self.value(&item, level + 1)?;
                    self.check()?;
                }
                if !first {
                    self.newline(level);
                }
                self.out.push(']');
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = Vec::new();
                for key in v.try_iter()? {
                    keys.push(key);
                    if self.out.len() + 2 * keys.len() > self.limit {
                        return Err(self.exhausted());
                    }
                }
                if self.opts.sort_keys {
                    keys.sort();
                }
                self.out.push('{');
                for (i, key) in keys.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(&self.opts.item_sep);
                    }
                    self.newline(level + 1);
                    self.key(key)?;
                    self.out.push_str(&self.opts.key_sep);
                    self.value(&v.get_item(key)?, level + 1)?;
                    self.check()?;
                }
                if !keys.is_empty() {
                    self.newline(level);
                }
                self.out.push('}');
            }
            // Objects without a sequence or map shape (a macro, `loop`) as their text.
            _ => {
                let s = v.to_string();
                write_str(&mut self.out, &s, self.opts.ensure_ascii);
            }
        }
        self.check()
    }
}

/// The `tojson` filter: `x | tojson`, `x | tojson(2)`, `x | tojson(indent=4, sort_keys=true)`.
pub(super) fn tojson(
    state: &State,
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, JinjaError> {
    let opts = options(indent, &kwargs)?;
    let limit = state.fuel_levels().map_or(usize::MAX, |(_, r)| {
        usize::try_from(r.saturating_mul(64)).unwrap_or(usize::MAX)
    });
    let mut w = Writer {
        state,
        opts: &opts,
        out: String::new(),
        limit,
    };
    w.value(value, 0)?;
    Ok(Value::from_safe_string(w.out))
}

#[cfg(test)]
mod tests {
    use super::python_float;

    #[test]
    fn floats_as_python_repr() {
        for (f, want) in [
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.125, "123456789.125"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e20, "1e+20"),
            (2.5e100, "2.5e+100"),
            (f64::INFINITY, "Infinity"),
        ] {
            assert_eq!(python_float(f), want, "{f:e}");
        }
    }
}
