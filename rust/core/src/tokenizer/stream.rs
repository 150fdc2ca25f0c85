//! Incremental decoding for streaming generation: ids arrive one at a time, and each step
//! returns only text that is complete. A byte-level BPE token can end in the middle of a UTF-8
//! character (an emoji is often two or three tokens); those bytes wait for the rest of the
//! character instead of being shown as U+FFFD. Bytes that can never become valid UTF-8 are shown
//! as U+FFFD at once, as `decode` would show them.
//!
//! The concatenation of every step's text (and `finish`) equals `decode` of all the ids.

use crate::tokenizer::pipeline::{push_byte_level, Decoder};
use crate::tokenizer::Tokenizer;
use crate::Result;

/// The state of one stream.
#[derive(Debug, Clone, Default)]
pub struct DecodeStream {
    pending: Vec<u8>,
    /// Tokens shown so far (a WordPiece decoder treats the first token differently).
    shown: usize,
    skip_special: bool,
}

/// The length of the longest prefix of `b` that is valid UTF-8 or contains invalid sequences
/// that no further byte can repair; what follows is an incomplete character (at most 3 bytes).
fn complete_prefix(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) => match e.error_len() {
            // An invalid sequence: everything up to and including it is final.
            Some(len) => {
                let end = e.valid_up_to() + len;
                end + complete_prefix(&b[end..])
            }
            // An incomplete character at the end: wait for more bytes.
            None => e.valid_up_to(),
        },
    }
}

impl DecodeStream {
    /// A new stream; `skip_special` drops special tokens as `decode` does.
    pub fn new(skip_special: bool) -> Self {
        DecodeStream {
            skip_special,
            ..DecodeStream::default()
        }
    }

    /// Adds one id; returns the text it completes (possibly empty).
    pub fn step(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        match tok {
            Tokenizer::Bpe(t) => {
                let bytes = t.decode_bytes(&[id], self.skip_special)?;
                self.pending.extend_from_slice(&bytes);
                Ok(self.take_complete())
            }
            Tokenizer::Hf(t) if matches!(t.decoder, Some(Decoder::ByteLevel)) => {
                let text = t.decode(&[id], false)?; // checks the id
                if !(self.skip_special && t.is_special(id)) {
                    match t.id_to_token(id) {
                        Some(tok) => push_byte_level(&tok, &mut self.pending),
                        None => self.pending.extend_from_slice(text.as_bytes()),
                    }
                }
                Ok(self.take_complete())
            }
            Tokenizer::Hf(t) => {
                let text = t.decode(&[id], self.skip_special)?;
                if text.is_empty() {
                    return Ok(text);
                }
                let out = match &t.decoder {
                    // The WordPiece decoder works token by token: the first token as it is, each
                    // later one joined or spaced; decoding [first, id] and dropping the first
                    // token's text gives exactly that step's text.
                    Some(Decoder::WordPiece { .. }) if self.shown > 0 => {
                        let marker = t.decode(&[id, id], self.skip_special)?;
                        marker[text.len()..].to_owned()
                    }
                    Some(Decoder::WordPiece { .. } | Decoder::ByteLevel) => text,
                    None if self.shown > 0 => format!(" {text}"),
                    None => text,
                };
                self.shown += 1;
                Ok(out)
            }
        }
    }

    fn take_complete(&mut self) -> String {
        let n = complete_prefix(&self.pending);
        let out = String::from_utf8_lossy(&self.pending[..n]).into_owned();
        self.pending.drain(..n);
        out
    }

    /// Ends the stream: the text still held back (an incomplete character at the end, as
    /// U+FFFD); the stream starts afresh after it.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        *self = DecodeStream::new(self.skip_special);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_prefix_waits_for_whole_characters() {
        assert_eq!(complete_prefix(b"abc"), 3);
        assert_eq!(complete_prefix("a中".as_bytes()), 4);
        assert_eq!(complete_prefix(&"a中".as_bytes()[..3]), 1);
        assert_eq!(complete_prefix(b"a\xffb"), 3, "an invalid byte is final");
        assert_eq!(complete_prefix(b"a\xff\xe4\xb8"), 2);
        assert_eq!(complete_prefix(b""), 0);
    }
}
