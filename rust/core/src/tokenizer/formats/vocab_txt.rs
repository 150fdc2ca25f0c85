//! `vocab.txt`: one WordPiece token per line, the line number (from 0) being its id, as BERT
//! checkpoints ship it. Trailing white space (including `\r`) is not part of a token, as in
//! Hugging Face's reader.

use crate::{Error, Result};

/// The `(token, id)` pairs of a vocab.txt file's contents. `what` names the file in errors.
pub fn parse(what: &str, data: &[u8]) -> Result<Vec<(String, u32)>> {
    let text = std::str::from_utf8(data)
        .map_err(|e| Error::format(what, format!("not UTF-8 (at byte {})", e.valid_up_to())))?;
    let mut vocab = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let tok = line.trim_end();
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
}
