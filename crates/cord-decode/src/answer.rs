//! Final-answer extraction and comparison with the ground truth (O-20).

/// The answer stated in `text`: the last `\boxed{...}` (balanced braces), else what follows the
/// last "The final answer is", else what follows the last "answer is", else the last number.
pub fn extract_answer(text: &str) -> Option<String> {
    if let Some(b) = last_boxed(text) {
        let b = b.trim();
        if !b.is_empty() {
            return Some(b.to_string());
        }
    }
    for phrase in ["the final answer is", "answer is"] {
        if let Some(a) = after_last_phrase(text, phrase) {
            return Some(a);
        }
    }
    last_number(text)
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

/// `s` starts just after an opening brace; returns the text up to the matching close brace.
fn balanced(s: &str) -> Option<&str> {
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
    if words_follow && parse_number(&normalize(head)).is_some() {
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
        for (open, close) in [("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
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

/// The last number in `text` (integers with digit-group commas, decimals, simple a/b).
pub fn last_number(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut last = None;
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_digit()
            && (i == 0 || !(b[i - 1].is_ascii_digit() || b[i - 1] == b'.' || b[i - 1] == b','));
        if !starts {
            i += 1;
            continue;
        }
        let mut start = i;
        if i > 0 && b[i - 1] == b'-' {
            start = i - 1;
        }
        let mut j = i;
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
            if j + 1 < b.len() && b[j] == b'.' && b[j + 1].is_ascii_digit() {
                j += 1;
                continue;
            }
            if j + 1 < b.len() && b[j] == b'/' && b[j + 1].is_ascii_digit() {
                j += 1;
                continue;
            }
            break;
        }
        last = Some(text[start..j].replace(',', ""));
        i = j;
    }
    last
}

/// Whether a predicted answer matches the ground truth: numerically when both parse as numbers
/// (commas, `$`, `%`, trailing `.`, `3.50` = `3.5`, `\frac{a}{b}`, `a/b`), else as normalised
/// strings (case, spaces, `\text{}`, `\left`/`\right`, `\dfrac`, `x =` prefix).
pub fn answers_match(pred: &str, gt: &str) -> bool {
    let p = normalize(pred);
    let g = normalize(gt);
    if p.is_empty() || g.is_empty() {
        return false;
    }
    if let (Some(a), Some(b)) = (parse_number(&p), parse_number(&g)) {
        return (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    }
    p == g
}

/// Normal form of an answer string used by [`answers_match`].
pub fn normalize(s: &str) -> String {
    let mut s = s.trim().to_string();
    if let Some(inner) = whole_boxed(&s) {
        s = inner.to_string();
    }
    let mut s = strip_text_macros(&s);
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\ ", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\$", ""),
        ("$", ""),
    ] {
        s = s.replace(from, to);
    }
    let mut s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    while s.ends_with('.') {
        s.pop();
    }
    let s = s.to_lowercase();
    // "x=5" -> "5" (a single-letter variable).
    let b = s.as_bytes();
    if b.len() > 2 && b[0].is_ascii_alphabetic() && b[1] == b'=' {
        return s[2..].to_string();
    }
    s
}

fn whole_boxed(s: &str) -> Option<&str> {
    let r = s.strip_prefix("\\boxed{")?;
    let inner = balanced(r)?;
    (inner.len() + 1 == r.len()).then_some(inner)
}

fn strip_text_macros(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    'outer: while !rest.is_empty() {
        for m in ["\\text{", "\\textbf{", "\\mathrm{", "\\mbox{"] {
            if let Some(r) = rest.strip_prefix(m)
                && let Some(inner) = balanced(r)
            {
                out.push_str(inner);
                rest = &r[inner.len() + 1..];
                continue 'outer;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn parse_plain(s: &str) -> Option<f64> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    let ok = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|&c| c == '.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit());
    if ok { s.parse().ok() } else { None }
}

fn strip_group_commas(s: &str) -> String {
    let body = s.strip_prefix('-').unwrap_or(s);
    let int = body.split('.').next().unwrap_or("");
    let groups: Vec<&str> = int.split(',').collect();
    let grouped = groups.len() > 1
        && (1..=3).contains(&groups[0].len())
        && groups[1..].iter().all(|g| g.len() == 3)
        && groups.iter().all(|g| g.chars().all(|c| c.is_ascii_digit()));
    if grouped {
        s.replace(',', "")
    } else {
        s.to_string()
    }
}

/// A normalised answer as a number, if it is one.
fn parse_number(s: &str) -> Option<f64> {
    let s = strip_group_commas(s);
    if let Some(v) = parse_plain(&s) {
        return Some(v);
    }
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.as_str()),
    };
    let frac = if let Some(r) = body.strip_prefix("\\frac{") {
        let a = balanced(r)?;
        let r2 = r[a.len() + 1..].strip_prefix('{')?;
        let b = balanced(r2)?;
        if a.len() + 1 + 1 + b.len() + 1 != r.len() {
            return None;
        }
        Some((a.to_string(), b.to_string()))
    } else {
        body.split_once('/')
            .map(|(a, b)| (a.to_string(), b.to_string()))
    };
    let (a, b) = frac?;
    let a = parse_plain(a.trim_start_matches('-').trim())
        .map(|v| if a.starts_with('-') { -v } else { v })?;
    let b = parse_plain(&b)?;
    if b == 0.0 {
        return None;
    }
    let v = a / b;
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_number_forms() {
        assert_eq!(parse_number("3.50"), Some(3.5));
        assert_eq!(parse_number("1,000"), Some(1000.0));
        assert_eq!(parse_number("\\frac{1}{4}"), Some(0.25));
        assert_eq!(parse_number("-3/4"), Some(-0.75));
        assert_eq!(parse_number("1/0"), None);
        assert_eq!(parse_number("1,2"), None);
        assert_eq!(parse_number("abc"), None);
        assert_eq!(parse_number("."), None);
    }
}
