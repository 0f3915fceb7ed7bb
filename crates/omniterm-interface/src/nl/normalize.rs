//! Normalisation: one spelling for quotes, dashes and white space, before tokenising.
//!
//! Case is kept here (payloads are case-sensitive); tokens carry a lowercase form.

/// Maps typographic quotes and dashes to ASCII, turns control characters and runs of
/// white space into one space, and trims.
pub(crate) fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for ch in text.chars() {
        let ch = match ch {
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{2032}' | '`' => '\'',
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{2033}' | '\u{00AB}' | '\u{00BB}' => '"',
            '\u{2010}'..='\u{2015}' | '\u{2212}' => '-',
            ch if ch.is_whitespace() || ch.is_control() => ' ',
            ch => ch,
        };
        if ch == ' ' {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn check(input: &str, expected: &str) {
        assert_eq!(normalize(input), expected, "{input:?}");
    }

    #[test]
    fn quotes_and_dashes_become_ascii() {
        check(
            "encrypt \u{201C}hi\u{201D} with \u{2018}k\u{2019}",
            "encrypt \"hi\" with 'k'",
        );
        check("core\u{2013}engine", "core-engine");
    }

    #[test]
    fn white_space_and_control_characters_collapse() {
        check("  deploy\t\tengine\r\n 1.4  ", "deploy engine 1.4");
        check("a\u{0000}b", "a b");
        check("", "");
    }

    #[test]
    fn case_is_kept() {
        check("Encrypt 'TopSecret'", "Encrypt 'TopSecret'");
    }
}
