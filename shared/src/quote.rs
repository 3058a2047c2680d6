//! User input quoted in error messages: at most [`QUOTE_LIMIT`] characters of it, so that a
//! 5,000-character schedule or id does not come back whole in every refusal, log line and
//! `invalid` event. Control characters are escaped (`\0`, `\n`): they would garble a terminal or
//! a log line.

use std::fmt::{self, Write};

/// Most characters of one piece of user input an error message quotes.
pub const QUOTE_LIMIT: usize = 80;

/// `text` as an error message quotes it: in single quotes, cut like [`clip`].
pub fn quote(text: &str) -> String {
    format!("'{}'", clip(text))
}

/// The first [`QUOTE_LIMIT`] characters of `text`, then `…` if there were more; control
/// characters escaped.
pub fn clip(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(4 * QUOTE_LIMIT));
    // Writing into a String cannot fail.
    let _ = write_clipped(&mut out, text);
    out
}

/// A message from a library (serde, humantime) with each quoted run in it (`"..."` or
/// `` `...` ``) cut like [`clip`]: those libraries quote the input they refuse in full.
pub fn clip_quoted_runs(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(4 * QUOTE_LIMIT));
    let mut rest = message;
    while let Some(open) = rest.find(['"', '`']) {
        // Both delimiters are ASCII, so the byte is the character.
        let delimiter = char::from(rest.as_bytes()[open]);
        out.push_str(&rest[..=open]);
        let body = &rest[open + 1..];
        let end = run_end(body, delimiter).unwrap_or(body.len());
        let run = &body[..end];
        if run.chars().count() > QUOTE_LIMIT {
            out.extend(run.chars().take(QUOTE_LIMIT));
            out.push('…');
        } else {
            out.push_str(run);
        }
        rest = &body[end..];
        if let Some(close) = rest.strip_prefix(delimiter) {
            out.push(delimiter);
            rest = close;
        }
    }
    out.push_str(rest);
    out
}

/// Byte index of the `delimiter` closing a run; inside `"..."`, a backslash escapes the next
/// character (Rust's `{:?}` of a string).
fn run_end(body: &str, delimiter: char) -> Option<usize> {
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == delimiter {
            return Some(i);
        }
        if c == '\\' && delimiter == '"' {
            chars.next();
        }
    }
    None
}

fn write_clipped(out: &mut impl Write, text: &str) -> fmt::Result {
    let mut chars = text.chars();
    for c in chars.by_ref().take(QUOTE_LIMIT) {
        if c.is_control() {
            write!(out, "{}", c.escape_debug())?;
        } else {
            out.write_char(c)?;
        }
    }
    if chars.next().is_some() {
        out.write_char('…')?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole() {
        assert_eq!(quote("0 0 30 2 *"), "'0 0 30 2 *'");
        assert_eq!(quote(""), "''");
        let exact = "x".repeat(QUOTE_LIMIT);
        assert_eq!(quote(&exact), format!("'{exact}'"));
    }

    #[test]
    fn long_input_is_cut_at_the_limit_with_an_ellipsis() {
        let long = "é".repeat(5000);
        assert_eq!(clip(&long), format!("{}…", "é".repeat(QUOTE_LIMIT)));
        assert_eq!(
            quote(&"a".repeat(QUOTE_LIMIT + 1)),
            format!("'{}…'", "a".repeat(QUOTE_LIMIT))
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(quote("a\0b\nc"), r"'a\0b\nc'");
    }

    #[test]
    fn quoted_runs_in_library_messages_are_cut() {
        let long = "z".repeat(300);
        let cut = format!("{}…", "z".repeat(QUOTE_LIMIT));
        assert_eq!(
            clip_quoted_runs(&format!(
                "invalid type: string {long:?}, expected a shard count"
            )),
            format!("invalid type: string \"{cut}\", expected a shard count")
        );
        assert_eq!(
            clip_quoted_runs(&format!("unknown variant `{long}`, expected `shell`")),
            format!("unknown variant `{cut}`, expected `shell`")
        );
        // An escaped quote does not end the run; short runs and the text around stay.
        let escaped = format!("{}\"{}", "a".repeat(10), "b".repeat(100));
        assert_eq!(
            clip_quoted_runs(&format!("string {escaped:?}, expected `x`")),
            format!(
                "string \"{}\\\"{}…\", expected `x`",
                "a".repeat(10),
                "b".repeat(QUOTE_LIMIT - 12)
            )
        );
        assert_eq!(clip_quoted_runs("missing field `id`"), "missing field `id`");
        // An unclosed run is cut too.
        assert_eq!(
            clip_quoted_runs(&format!("bad \"{long}")),
            format!("bad \"{cut}")
        );
    }
}
