//! GPT-2's byte-to-character mapping (`bytes_to_unicode` in OpenAI's encoder.py, the
//! `ByteLevel` pre-tokenizer in Hugging Face `tokenizers`): each byte is shown as a printable
//! character, so a byte-level token is a string such as `"Ġworld"` (`Ġ` is the space byte).
//! Printable Latin-1 bytes stand for themselves; the other 68 take the characters from U+0100 on,
//! in byte order.

const fn is_self_printing(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

const fn build_table() -> [char; 256] {
    let mut t = ['\0'; 256];
    let mut shifted = 0_u32;
    let mut b = 0;
    while b < 256 {
        t[b] = if is_self_printing(b as u8) {
            b as u8 as char
        } else {
            let c = 256 + shifted;
            shifted += 1;
            // Every value from 256 to 323 is a valid scalar value.
            match char::from_u32(c) {
                Some(ch) => ch,
                None => '\0',
            }
        };
        b += 1;
    }
    t
}

/// The character that stands for each byte.
pub const BYTE_TO_CHAR: [char; 256] = build_table();

/// The token's bytes as a byte-level string.
pub fn bytes_to_string(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| BYTE_TO_CHAR[b as usize]).collect()
}

/// The bytes a byte-level string stands for; `None` if a character maps to no byte.
pub fn string_to_bytes(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}

fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 && is_self_printing(cp as u8) {
        Some(cp as u8)
    } else if (256..256 + 68).contains(&cp) {
        // The n-th non-self-printing byte maps to 256 + n.
        let n = (cp - 256) as usize;
        (0..=255_u8).filter(|&b| !is_self_printing(b)).nth(n)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_characters() {
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(BYTE_TO_CHAR[0], 'Ā');
        assert_eq!(BYTE_TO_CHAR[0xAD], 'Ń');
        assert_eq!(bytes_to_string(b" world"), "Ġworld");
    }

    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let s = bytes_to_string(&all);
        assert_eq!(
            s.chars().collect::<std::collections::HashSet<_>>().len(),
            256
        );
        assert_eq!(string_to_bytes(&s), Some(all));
        assert_eq!(string_to_bytes("中"), None);
    }
}
