//! Tokenisation that keeps quoted payloads verbatim.
//!
//! A quote (`'` or `"`) that starts a word opens a payload that runs to the matching
//! quote; its text is kept exactly as typed (case, spaces, punctuation). Everything else
//! splits into words and single punctuation marks. Words keep the characters that make
//! versions, names and quantities (`1.5.0-rc1`, `payments-v2`, `10%`, `p99`, `5xx`);
//! sentence punctuation at a word's end is split off.

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A word or a number-like word.
    Word,
    /// A quoted payload, without its quotes.
    Quoted,
    /// One punctuation mark (`:`, `=`, `,`, `;`, `?`, `!`, `(`, …).
    Punct,
}

/// One token of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: Kind,
    /// As typed (for payloads, key names and queries).
    pub(crate) raw: String,
    /// Lowercase; for words, after typo correction.
    pub(crate) norm: String,
    /// Byte offset of the token in the normalised text.
    pub(crate) start: usize,
}

impl Token {
    fn new(kind: Kind, raw: &str, start: usize) -> Self {
        Self {
            kind,
            raw: raw.to_owned(),
            norm: raw.to_lowercase(),
            start,
        }
    }

    pub(crate) fn is_word(&self) -> bool {
        self.kind == Kind::Word
    }

    pub(crate) fn is(&self, word: &str) -> bool {
        self.kind == Kind::Word && self.norm == word
    }
}

const PUNCT: &[char] = &[
    ',', ';', ':', '?', '!', '(', ')', '[', ']', '{', '}', '=', '<', '>', '|', '&', '"',
];
/// Characters split off the end of a word (sentence punctuation).
const TRAILING: &[char] = &['.', '\''];

/// Splits normalised text into tokens. An unterminated quote takes the rest of the line.
pub(crate) fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, ch)) = chars.peek() {
        if ch == ' ' {
            chars.next();
            continue;
        }
        let at_word_start = start == 0 || text[..start].ends_with([' ', '=', ':', '(']);
        if (ch == '\'' || ch == '"') && at_word_start {
            chars.next();
            let body_start = start + 1;
            let mut end = text.len();
            for (index, next) in chars.by_ref() {
                if next == ch {
                    end = index;
                    break;
                }
            }
            tokens.push(Token::new(Kind::Quoted, &text[body_start..end], body_start));
            continue;
        }
        if PUNCT.contains(&ch) {
            chars.next();
            tokens.push(Token::new(
                Kind::Punct,
                &text[start..start + ch.len_utf8()],
                start,
            ));
            continue;
        }
        let mut end = start;
        while let Some(&(index, next)) = chars.peek() {
            if next == ' ' || PUNCT.contains(&next) {
                break;
            }
            end = index + next.len_utf8();
            chars.next();
        }
        let mut word = &text[start..end];
        let mut trailing = Vec::new();
        while let Some(last) = word.chars().last() {
            if word.len() > 1 && TRAILING.contains(&last) {
                trailing.push((start + word.len() - 1, last));
                word = &word[..word.len() - 1];
            } else {
                break;
            }
        }
        if word.len() == 1 && TRAILING.contains(&word.chars().next().unwrap_or(' ')) {
            tokens.push(Token::new(Kind::Punct, word, start));
        } else {
            tokens.push(Token::new(Kind::Word, word, start));
        }
        for (offset, mark) in trailing.into_iter().rev() {
            tokens.push(Token::new(Kind::Punct, &mark.to_string(), offset));
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<(Kind, String)> {
        tokenize(text)
            .into_iter()
            .map(|token| (token.kind, token.raw))
            .collect()
    }

    fn w(text: &str) -> (Kind, String) {
        (Kind::Word, text.into())
    }
    fn q(text: &str) -> (Kind, String) {
        (Kind::Quoted, text.into())
    }
    fn p(text: &str) -> (Kind, String) {
        (Kind::Punct, text.into())
    }

    #[test]
    fn quoted_payloads_are_kept_verbatim() {
        assert_eq!(
            words("encrypt 'Top Secret; rm' with key payments"),
            [
                w("encrypt"),
                q("Top Secret; rm"),
                w("with"),
                w("key"),
                w("payments")
            ]
        );
        assert_eq!(
            words("decrypt \"q8Zr1x==\" now"),
            [w("decrypt"), q("q8Zr1x=="), w("now")]
        );
    }

    #[test]
    fn apostrophes_inside_words_do_not_open_quotes() {
        assert_eq!(words("what's wrong"), [w("what's"), w("wrong")]);
        assert_eq!(words("don't roll back"), [w("don't"), w("roll"), w("back")]);
    }

    #[test]
    fn versions_names_and_quantities_stay_whole() {
        assert_eq!(
            words("push 1.5.0-rc1 v2.3.0 payments-v2 10% p99 5xx 15m"),
            [
                "push",
                "1.5.0-rc1",
                "v2.3.0",
                "payments-v2",
                "10%",
                "p99",
                "5xx",
                "15m"
            ]
            .map(w)
        );
    }

    #[test]
    fn sentence_punctuation_is_split_off() {
        assert_eq!(
            words("Please promote it to 100%. ok? key=test, pii: x"),
            [
                w("Please"),
                w("promote"),
                w("it"),
                w("to"),
                w("100%"),
                p("."),
                w("ok"),
                p("?"),
                w("key"),
                p("="),
                w("test"),
                p(","),
                w("pii"),
                p(":"),
                w("x"),
            ]
        );
    }

    #[test]
    fn unterminated_quote_takes_the_rest() {
        assert_eq!(words("encrypt 'abc def"), [w("encrypt"), q("abc def")]);
    }

    #[test]
    fn shell_metacharacters_are_tokens() {
        assert_eq!(words("a;b|c"), [w("a"), p(";"), w("b"), p("|"), w("c")]);
        assert!(tokenize("").is_empty());
        assert_eq!(words("?"), [p("?")]);
    }
}
