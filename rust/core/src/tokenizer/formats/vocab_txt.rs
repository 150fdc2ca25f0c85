//! `vocab.txt`: one WordPiece token per line, the line number (from 0) being its id, as BERT
//! checkpoints ship it. Trailing white space (including `\r`) is not part of a token, as in
//! Hugging Face's reader.

use crate::{Error, Result};

/// The most lines a vocab.txt may have: real BERT vocabularies have 30k–250k.
pub const MAX_LINES: usize = 1 << 20;

/// The longest token a vocab.txt may hold, in bytes: real ones are under 100.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// The `(token, id)` pairs of a vocab.txt file's contents. `what` names the file in errors.
pub fn parse(what: &str, data: &[u8]) -> Result<Vec<(String, u32)>> {
    let text = std::str::from_utf8(data)
        .map_err(|e| Error::format(what, format!("not UTF-8 (at byte {})", e.valid_up_to())))?;
    let mut vocab = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if i >= MAX_LINES {
            return Err(Error::format(
                what,
                format!("more than {MAX_LINES} lines (tokens); real vocabularies have 30k-250k"),
            ));
        }
        let tok = line.trim_end();
        if tok.len() > MAX_TOKEN_BYTES {
            return Err(Error::format(
                format!("{what} line {}", i + 1),
                format!(
                    "a token of {} bytes; at most {MAX_TOKEN_BYTES} are accepted",
                    tok.len()
                ),
            ));
        }
        if tok.is_empty() {
            return Err(Error::format(
                format!("{what} line {}", i + 1),
                "empty token",
            ));
        }
        let id = u32::try_from(i).map_err(|_| Error::format(what, "too many lines"))?;
        vocab.push((tok.to_owned(), id));
    }
    if vocab.is_empty() {
        return Err(Error::format(what, "no tokens"));
    }
    Ok(vocab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_ids() {
        let v = parse("v", b"[PAD]\r\n[UNK]\nhello  \n").unwrap();
        assert_eq!(
            v,
            vec![
                ("[PAD]".into(), 0),
                ("[UNK]".into(), 1),
                ("hello".into(), 2)
            ]
        );
        assert!(parse("v", b"a\n\nb\n")
            .unwrap_err()
            .to_string()
            .contains("line 2"));
        assert!(parse("v", b"").is_err());
        assert!(parse("v", b"\xff\n").is_err());
    }

    #[test]
    fn line_count_and_length_are_bounded() {
        let at = format!("{}\nb\n", "a".repeat(MAX_TOKEN_BYTES));
        assert_eq!(parse("v", at.as_bytes()).unwrap().len(), 2);
        let past = format!("b\n{}\n", "a".repeat(MAX_TOKEN_BYTES + 1));
        let err = parse("v", past.as_bytes()).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("at most 1024"),
            "{err}"
        );
        let lines = "x\n".repeat(MAX_LINES);
        assert_eq!(parse("v", lines.as_bytes()).unwrap().len(), MAX_LINES);
        let err = parse("v", format!("{lines}x\n").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 1048576 lines"), "{err}");
    }
}
