//! tiktoken rank files: one token per line, `<base64 bytes> <rank>`, as `tiktoken` and
//! `openai-whisper` ship them (`gpt2.tiktoken`, `cl100k_base.tiktoken`, ...). Empty lines are
//! skipped, as tiktoken's `load_tiktoken_bpe` does.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::{Error, Result};

/// Parses a rank file's contents. `what` names the file in errors.
pub fn parse(what: &str, data: &[u8]) -> Result<Vec<(Vec<u8>, u32)>> {
    let mut ranks = Vec::with_capacity(data.len() / 12);
    for (lineno, line) in data.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at = || format!("{what} line {}", lineno + 1);
        let mut fields = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let (Some(token), Some(rank), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(Error::format(at(), "expected `<base64 token> <rank>`"));
        };
        let token = STANDARD
            .decode(token)
            .map_err(|e| Error::format(at(), format!("bad base64 token: {e}")))?;
        let rank = std::str::from_utf8(rank)
            .ok()
            .and_then(|r| r.parse::<u32>().ok())
            .ok_or_else(|| {
                Error::format(
                    at(),
                    format!("bad rank {:?}", String::from_utf8_lossy(rank)),
                )
            })?;
        ranks.push((token, rank));
    }
    Ok(ranks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_skips_blank_ones() {
        let r = parse("t", b"IQ== 0\n\nIg== 1\r\nYWI= 2\n").unwrap();
        assert_eq!(
            r,
            vec![(b"!".to_vec(), 0), (b"\"".to_vec(), 1), (b"ab".to_vec(), 2)]
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("gpt2.tiktoken", b"IQ== 0\nIg==\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "gpt2.tiktoken line 2: expected `<base64 token> <rank>`");
        let e = parse("f", b"!!!! 0\n").unwrap_err().to_string();
        assert!(e.starts_with("f line 1: bad base64 token"), "{e}");
        let e = parse("f", b"IQ== -1\n").unwrap_err().to_string();
        assert_eq!(e, "f line 1: bad rank \"-1\"");
        assert!(parse("f", b"IQ== 0 extra\n").is_err());
        assert!(parse("f", b"IQ== 99999999999\n").is_err());
    }
}
