//! Finding the stated final answer in a model's text.

use crate::MAX_INPUT;

/// The answer stated in `text`, tried in this order:
/// 1. the last `\boxed{...}` / `\fbox{...}` (balanced braces, or `\boxed 5`);
/// 2. a GSM8K `#### N` line (the last one);
/// 3. what follows the last "The final answer is", else the last "answer is" (to the end of the
///    line; math delimiters and `**` are removed, and a number followed by words keeps the
///    number: "140 minutes" -> "140");
/// 4. the last math span (`$...$`, `\(...\)`, `\[...\]`, `$$...$$`) when it ends after the last
///    number outside of it; its right-hand side after the last top-level `=`;
/// 5. the last stated number (digit-group commas dropped, decimals, `a/b`, leading `.5`).
///
/// Only the last [`MAX_INPUT`] bytes of a longer text are searched.
pub fn extract_answer(text: &str) -> Option<String> {
    let text = tail(text, MAX_INPUT);
    if let Some(b) = last_boxed(text) {
        let b = b.trim();
        if !b.is_empty() {
            return Some(b.to_string());
        }
    }
    if let Some(a) = gsm8k_answer(text) {
        return Some(a);
    }
    for phrase in ["the final answer is", "answer is"] {
        if let Some(a) = after_last_phrase(text, phrase) {
            return Some(a);
        }
    }
    let number = last_number_at(text);
    if let Some((start, end, inner)) = last_math_span(text) {
        // The span wins unless a number stands after it.
        let number_later = number.as_ref().is_some_and(|(pos, _)| *pos >= end);
        if !number_later && start < end {
            let rhs = last_rhs(inner).trim();
            if !rhs.is_empty() {
                return Some(rhs.to_string());
            }
        }
    }
    number.map(|(_, n)| n)
}

/// The last `max` bytes of `s`, on a character boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Contents of the last `\boxed{...}` / `\fbox{...}` with balanced braces (or `\boxed 5`).
pub fn last_boxed(text: &str) -> Option<&str> {
    let mut best: Option<(usize, &str)> = None;
    for cmd in ["\\boxed", "\\fbox"] {
        let mut from = 0;
        while let Some(rel) = text[from..].find(cmd) {
            let start = from + rel;
            from = start + cmd.len();
            let rest = &text[from..];
            let inner = if let Some(r) = rest.trim_start().strip_prefix('{') {
                balanced(r)
            } else if rest.starts_with(' ') {
                let r = rest.trim_start();
                let end = r
                    .find(|c: char| c.is_whitespace() || c == '$')
                    .unwrap_or(r.len());
                Some(&r[..end]).filter(|s| !s.is_empty())
            } else {
                None
            };
            if let Some(inner) = inner
                && best.is_none_or(|(p, _)| start > p)
            {
                best = Some((start, inner));
            }
        }
    }
    best.map(|(_, s)| s)
}

/// `s` starts just after an opening brace; the text up to the matching close brace.
pub(crate) fn balanced(s: &str) -> Option<&str> {
    let mut depth = 1usize;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[..i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The rest of the line after the last `####`, when it is not empty.
pub fn gsm8k_answer(text: &str) -> Option<String> {
    let pos = text.rfind("####")?;
    let line = text[pos + 4..].lines().next().unwrap_or("");
    let cleaned = clean_span(line);
    (!cleaned.is_empty()).then(|| drop_trailing_words(&cleaned))
}

fn after_last_phrase(text: &str, phrase: &str) -> Option<String> {
    // ASCII lowering keeps byte offsets.
    let lower = text.to_ascii_lowercase();
    let pos = lower.rfind(phrase)?;
    let rest = &text[pos + phrase.len()..];
    let line = rest.split('\n').next().unwrap_or("");
    let cleaned = clean_span(line);
    if cleaned.is_empty() {
        None
    } else {
        Some(drop_trailing_words(&cleaned))
    }
}

/// A stated number followed by words keeps only the number: "140 minutes" -> "140",
/// "$1,200 per week" -> "$1,200", "16 eggs will not fit" -> "16". Anything else is unchanged
/// ("x = 5", "Paris", "3/4").
fn drop_trailing_words(s: &str) -> String {
    let Some((head, rest)) = s.split_once(char::is_whitespace) else {
        return s.to_string();
    };
    let head = head.trim_end_matches([',', '.', ';', ':']);
    let words_follow = rest.trim_start().starts_with(|c: char| c.is_alphabetic());
    let numeric = head.trim_start_matches(['$', '-', '+']);
    let is_number = !numeric.is_empty()
        && numeric
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ',' | '.' | '/'))
        && numeric.chars().any(|c| c.is_ascii_digit());
    if words_follow && is_number {
        head.to_string()
    } else {
        s.to_string()
    }
}

fn clean_span(s: &str) -> String {
    let mut s = s.trim();
    loop {
        let before = s;
        s = s.trim_start_matches(':').trim();
        s = s.trim_matches('*').trim();
        s = s.trim_end_matches('.').trim();
        for (open, close) in [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
            if s.len() >= open.len() + close.len()
                && let Some(inner) = s.strip_prefix(open).and_then(|x| x.strip_suffix(close))
            {
                s = inner.trim();
            }
        }
        if s == before {
            break;
        }
    }
    s.to_string()
}

/// The last math span: (start byte, end byte, contents). `$...$` follows pandoc's rule: the
/// opening `$` has a non-space right after it, the closing one a non-space right before it and
/// no digit right after it (so "$5 and $6" is money, not math).
fn last_math_span(text: &str) -> Option<(usize, usize, &str)> {
    let b = text.as_bytes();
    let mut last = None;
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        let found = if rest.starts_with("\\(") || rest.starts_with("\\[") {
            let close = if rest.starts_with("\\(") {
                "\\)"
            } else {
                "\\]"
            };
            rest[2..]
                .find(close)
                .map(|j| (i + 2, i + 2 + j, i + 2 + j + 2))
        } else if let Some(body) = rest.strip_prefix("$$") {
            body.find("$$").map(|j| (i + 2, i + 2 + j, i + 2 + j + 2))
        } else if b[i] == b'$' && i + 1 < b.len() && !b[i + 1].is_ascii_whitespace() {
            let mut found = None;
            let mut j = i + 1;
            while j < b.len() {
                if b[j] == b'$'
                    && !b[j - 1].is_ascii_whitespace()
                    && b[j - 1] != b'\\'
                    && !b.get(j + 1).is_some_and(u8::is_ascii_digit)
                {
                    found = Some((i + 1, j, j + 1));
                    break;
                }
                j += 1;
            }
            found
        } else {
            None
        };
        match found {
            Some((s, e, next)) if e > s => {
                last = Some((i, next, &text[s..e]));
                i = next;
            }
            _ => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    last
}

/// The part after the last `=` outside brackets (the whole text without one).
fn last_rhs(s: &str) -> &str {
    let mut depth = 0i32;
    let mut cut = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            '=' if depth == 0 => cut = i + 1,
            _ => {}
        }
    }
    &s[cut..]
}

/// The last number in `text` (integers with digit-group commas, decimals, simple a/b).
pub fn last_number(text: &str) -> Option<String> {
    last_number_at(text).map(|(_, n)| n)
}

/// The last number and the byte where it starts.
fn last_number_at(text: &str) -> Option<(usize, String)> {
    let b = text.as_bytes();
    let mut last = None;
    let mut i = 0;
    while i < b.len() {
        let digit_start = b[i].is_ascii_digit()
            && (i == 0 || !(b[i - 1].is_ascii_digit() || b[i - 1] == b'.' || b[i - 1] == b','));
        // ".5": a point that follows no digit and precedes one.
        let point_start = b[i] == b'.'
            && i + 1 < b.len()
            && b[i + 1].is_ascii_digit()
            && (i == 0 || !(b[i - 1].is_ascii_digit() || b[i - 1].is_ascii_alphabetic()));
        if !digit_start && !point_start {
            i += 1;
            continue;
        }
        let mut start = i;
        if i > 0 && b[i - 1] == b'-' {
            start = i - 1;
        }
        let mut j = if point_start { i + 1 } else { i };
        loop {
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            // Digit-group comma: exactly three digits follow.
            if j + 3 < b.len()
                && b[j] == b','
                && b[j + 1..j + 4].iter().all(u8::is_ascii_digit)
                && (j + 4 == b.len() || !b[j + 4].is_ascii_digit())
            {
                j += 4;
                continue;
            }
            if !point_start && j + 1 < b.len() && b[j] == b'.' && b[j + 1].is_ascii_digit() {
                j += 1;
                continue;
            }
            if j + 1 < b.len() && b[j] == b'/' && b[j + 1].is_ascii_digit() {
                j += 1;
                continue;
            }
            break;
        }
        last = Some((start, text[start..j].replace(',', "")));
        i = j;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(last_math_span("so $x = 5$."), Some((3, 10, "x = 5")));
        assert_eq!(last_math_span("costs $5 and $6 total"), None);
        assert_eq!(last_math_span("\\(a\\) and \\[b\\]"), Some((10, 15, "b")));
        assert_eq!(last_rhs("f(x=1) = 3"), " 3");
    }
}
