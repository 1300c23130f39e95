//! Text that came from outside (an identity provider's error description, a token's `kid`)
//! made safe to put into errors and logs.

use std::fmt::Write;

/// Longest piece of outside text kept in an error or log line, in bytes (before escaping).
pub const MAX_UNTRUSTED_TEXT: usize = 256;

/// `text` from an identity provider, a token or a peer, made fit for an error message or a
/// log line: control characters (newlines that would forge log lines, terminal escapes) and
/// bidirectional overrides are escaped as `\n`, `\u{1b}`, …, and anything past
/// [`MAX_UNTRUSTED_TEXT`] bytes is cut off, saying how much was left out.
///
/// ```
/// use en_auth_core::untrusted_text;
/// assert_eq!(untrusted_text("bad\nINFO forged"), "bad\\nINFO forged");
/// let long = untrusted_text(&"x".repeat(10_000));
/// assert!(long.len() < 300 && long.ends_with("(9744 more bytes)"));
/// ```
pub fn untrusted_text(text: &str) -> String {
    let mut end = text.len().min(MAX_UNTRUSTED_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let (kept, cut) = text.split_at(end);
    let mut out = String::with_capacity(kept.len() + 24);
    for c in kept.chars() {
        if needs_escape(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if !cut.is_empty() {
        let _ = write!(out, "… ({} more bytes)", cut.len());
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped_and_length_is_capped() {
        assert_eq!(untrusted_text("plain text é"), "plain text é");
        assert_eq!(untrusted_text("a\r\nb\u{1b}[31m"), "a\\r\\nb\\u{1b}[31m");
        assert_eq!(untrusted_text("\u{202e}gnp.exe"), "\\u{202e}gnp.exe");
        let long = "é".repeat(1000); // 2000 bytes; the cut falls inside a character
        let shown = untrusted_text(&long);
        assert!(shown.starts_with("éé"));
        assert!(shown.len() <= MAX_UNTRUSTED_TEXT + 24, "{}", shown.len());
        assert!(shown.ends_with("(1744 more bytes)"), "{shown}");
    }
}
