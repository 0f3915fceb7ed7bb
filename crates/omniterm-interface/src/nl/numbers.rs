//! Numbers written as words ("ten", "seventy five", "one hundred", "a quarter").

/// The value of a run of number words starting at `words[0]`, and how many words it
/// used; `None` when `words[0]` is not a number word.
pub(crate) fn parse_number_words(words: &[&str]) -> Option<(i64, usize)> {
    let mut total: i64 = 0;
    let mut current: i64 = 0;
    let mut used = 0;
    for (index, word) in words.iter().enumerate() {
        let word = word.trim_end_matches('%');
        if let Some(value) = unit(word) {
            // "twenty five" and "one hundred five" add; "ten five" is two numbers.
            let rest = current % 100;
            let fits = current == 0 || rest == 0 || (rest >= 20 && rest % 10 == 0 && value < 10);
            if !fits {
                break;
            }
            current += value;
        } else if let Some(value) = tens(word) {
            if current % 100 != 0 {
                break;
            }
            current += value;
        } else if word == "hundred" && used > 0 && current < 10 {
            current = current.max(1) * 100;
        } else if word == "hundred" && used == 0 {
            break;
        } else if word == "thousand" && used > 0 {
            total += current.max(1) * 1000;
            current = 0;
        } else if word == "and" && used > 0 && index + 1 < words.len() {
            // "one hundred and five"
            continue;
        } else {
            break;
        }
        used = index + 1;
    }
    (used > 0).then_some((total + current, used))
}

/// A fraction in words as a percentage ("a quarter" → 25, "half" → 50).
pub(crate) fn fraction_percent(words: &[&str]) -> Option<(i64, usize)> {
    let skip = usize::from(matches!(words.first(), Some(&("a" | "one"))));
    let value = match *words.get(skip)? {
        "half" => 50,
        "quarter" => 25,
        "third" => 33,
        "tenth" => 10,
        "fifth" => 20,
        _ => return None,
    };
    Some((value, skip + 1))
}

fn unit(word: &str) -> Option<i64> {
    Some(match word {
        "zero" | "none" => 0,
        "one" => 1,
        "two" | "couple" => 2,
        "three" => 3,
        "four" => 4,
        "five" => 5,
        "six" => 6,
        "seven" => 7,
        "eight" => 8,
        "nine" => 9,
        "ten" => 10,
        "eleven" => 11,
        "twelve" | "dozen" => 12,
        "thirteen" => 13,
        "fourteen" => 14,
        "fifteen" => 15,
        "sixteen" => 16,
        "seventeen" => 17,
        "eighteen" => 18,
        "nineteen" => 19,
        _ => return None,
    })
}

fn tens(word: &str) -> Option<i64> {
    Some(match word {
        "twenty" => 20,
        "thirty" => 30,
        "forty" | "fourty" => 40,
        "fifty" => 50,
        "sixty" => 60,
        "seventy" => 70,
        "eighty" => 80,
        "ninety" => 90,
        _ => return None,
    })
}

/// A number written with digits (`10`, `10%`, `+2`, `-1`).
pub(crate) fn parse_digits(word: &str) -> Option<i64> {
    let word = word.trim_end_matches('%');
    if word.is_empty() || word.len() > 12 {
        return None;
    }
    word.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<(i64, usize)>) {
        let words: Vec<&str> = text.split(' ').collect();
        assert_eq!(parse_number_words(&words), expected, "{text:?}");
    }

    #[test]
    fn single_words() {
        check("ten percent", Some((10, 1)));
        check("three pods", Some((3, 1)));
        check("zero", Some((0, 1)));
        check("percent", None);
    }

    #[test]
    fn compounds() {
        check("seventy five %", Some((75, 2)));
        check("twenty percent", Some((20, 1)));
        check("one hundred percent", Some((100, 2)));
        check("one hundred and five", Some((105, 4)));
        check("two thousand", Some((2000, 2)));
    }

    #[test]
    fn separate_numbers_are_not_merged() {
        check("five twenty", Some((5, 1)));
        check("ten five", Some((10, 1)));
        check("hundred", None);
    }

    #[test]
    fn fractions() {
        assert_eq!(fraction_percent(&["a", "quarter"]), Some((25, 2)));
        assert_eq!(fraction_percent(&["half"]), Some((50, 1)));
        assert_eq!(fraction_percent(&["a", "canary"]), None);
    }

    #[test]
    fn digits() {
        assert_eq!(parse_digits("10%"), Some(10));
        assert_eq!(parse_digits("-1"), Some(-1));
        assert_eq!(parse_digits("1.4"), None);
        assert_eq!(parse_digits("99999999999999999999"), None);
    }
}
