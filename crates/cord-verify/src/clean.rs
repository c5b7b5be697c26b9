//! String-level normalisation of an answer before it is parsed.

use crate::extract::balanced;

/// Macros whose braced argument is kept as plain text (`\text{cm}` -> ` cm `).
const TEXT_MACROS: &[&str] = &[
    "\\text",
    "\\textbf",
    "\\textit",
    "\\textrm",
    "\\mathrm",
    "\\mathbf",
    "\\mathit",
    "\\mbox",
    "\\operatorname",
    "\\textnormal",
    "\\boldsymbol",
];

/// Removes the answer's wrapping: a whole `\boxed{}`, math delimiters, `**`, a trailing period.
fn unwrap(s: &str) -> String {
    let mut s = s.trim().to_string();
    loop {
        let before = s.clone();
        for cmd in ["\\boxed", "\\fbox"] {
            if let Some(r) = s.strip_prefix(cmd).map(str::trim_start)
                && let Some(r) = r.strip_prefix('{')
                && let Some(inner) = balanced(r)
                && inner.len() + 1 == r.len()
            {
                s = inner.trim().to_string();
            }
        }
        for (open, close) in [
            ("$$", "$$"),
            ("$", "$"),
            ("\\(", "\\)"),
            ("\\[", "\\]"),
            ("**", "**"),
        ] {
            if s.len() >= open.len() + close.len()
                && let Some(inner) = s.strip_prefix(open).and_then(|x| x.strip_suffix(close))
            {
                s = inner.trim().to_string();
            }
        }
        while s.ends_with('.') && !s.ends_with("..") {
            s.pop();
            s = s.trim_end().to_string();
        }
        if s == before {
            return s;
        }
    }
}

/// `\text{..}` and friends replaced by their contents, spaced.
fn strip_text_macros(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    'outer: while !rest.is_empty() {
        for m in TEXT_MACROS {
            if let Some(r) = rest.strip_prefix(m)
                && !r.starts_with(|c: char| c.is_ascii_alphabetic())
                && let Some(r) = r.trim_start().strip_prefix('{')
                && let Some(inner) = balanced(r)
            {
                out.push(' ');
                out.push_str(inner);
                out.push(' ');
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

/// `\frac12` -> `\frac{1}{2}`, `\sqrt2` -> `\sqrt{2}`: single-character arguments get braces.
fn brace_single_args(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    while !rest.is_empty() {
        let hit = [("\\frac", 2), ("\\binom", 2), ("\\sqrt", 1)]
            .into_iter()
            .find(|(cmd, _)| {
                rest.starts_with(cmd)
                    && !rest[cmd.len()..].starts_with(|c: char| c.is_ascii_alphabetic())
            });
        let Some((cmd, nargs)) = hit else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        };
        out.push_str(cmd);
        rest = &rest[cmd.len()..];
        if cmd == "\\sqrt"
            && let Some(r) = rest.trim_start().strip_prefix('[')
            && let Some(end) = r.find(']')
        {
            out.push('[');
            out.push_str(&r[..=end]);
            rest = &r[end + 1..];
        }
        for _ in 0..nargs {
            let r = rest.trim_start();
            match r.chars().next() {
                Some('{') => {
                    if let Some(inner) = balanced(&r[1..]) {
                        out.push('{');
                        out.push_str(inner);
                        out.push('}');
                        rest = &r[inner.len() + 2..];
                    } else {
                        break;
                    }
                }
                Some(c) if c.is_ascii_alphanumeric() => {
                    out.push('{');
                    out.push(c);
                    out.push('}');
                    rest = &r[1..];
                }
                _ => break,
            }
        }
    }
    out
}

/// Drops the commas of digit groups: `3,000` -> `3000`, `1,234,567.5` -> `1234567.5`
/// (a run of 1-3 digits, then groups of exactly three; `1,2` and `1, 234` are kept).
fn drop_group_commas(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let boundary =
            i == 0 || !(b[i - 1].is_ascii_digit() || b[i - 1] == b'.' || b[i - 1] == b',');
        if b[i].is_ascii_digit() && boundary {
            let mut j = i;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let lead = j - i;
            let mut k = j;
            let mut groups = 0;
            while k + 4 <= b.len()
                && b[k] == b','
                && b[k + 1..k + 4].iter().all(u8::is_ascii_digit)
                && (k + 4 == b.len() || !b[k + 4].is_ascii_digit())
            {
                k += 4;
                groups += 1;
            }
            if groups > 0 && (1..=3).contains(&lead) {
                out.push_str(&s[i..k].replace(',', ""));
            } else {
                out.push_str(&s[i..j]);
                k = j;
            }
            i = k;
            continue;
        }
        let c = s[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The cleaned form of an answer that the parser reads: wrapping, spacing macros, `\left` /
/// `\right`, `\dfrac` / `\tfrac`, text macros, degrees, `\$`, Unicode math signs, digit-group
/// commas and repeated spaces are gone; `\%` and a trailing "percent" become `%`.
pub fn clean(s: &str) -> String {
    let s = unwrap(s);
    let mut s = strip_text_macros(&s);
    for (from, to) in [
        ("\\displaystyle", " "),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\left.", ""),
        ("\\right.", ""),
        ("\\left", ""),
        ("\\right", ""),
        ("\\bigl", ""),
        ("\\bigr", ""),
        ("\\big", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", " "),
        ("\\qquad", " "),
        ("\\quad", " "),
        ("~", " "),
        ("{,}", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("\\degree", ""),
        ("°", ""),
        ("\\%", "%"),
        ("\\$", ""),
        ("$", ""),
        ("\\lfloor", "\\floor("),
        ("\\rfloor", ")"),
        ("\\lceil", "\\ceil("),
        ("\\rceil", ")"),
        ("−", "-"),
        ("–", "-"),
        ("×", "*"),
        ("·", "*"),
        ("÷", "/"),
        ("±", "\\pm "),
        ("√", "\\sqrt"),
        ("π", "\\pi "),
        ("∞", "\\infty "),
        ("∪", "\\cup "),
        ("²", "^2"),
        ("³", "^3"),
        ("≤", "\\le "),
        ("≥", "\\ge "),
        ("\\leq", "\\le"),
        ("\\geq", "\\ge"),
    ] {
        if s.contains(from) {
            s = s.replace(from, to);
        }
    }
    let s = brace_single_args(&s);
    let mut s = drop_group_commas(&s);
    s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.contains(" ^") {
        s = s.replace(" ^", "^");
    }
    // A trailing "percent" / "per cent" is a percent sign.
    let lower = s.to_ascii_lowercase();
    for word in [" percent", " per cent"] {
        if lower.ends_with(word) && s.len() > word.len() {
            s.truncate(s.len() - word.len());
            s.push('%');
            break;
        }
    }
    while s.ends_with('.') && !s.ends_with("..") {
        s.pop();
    }
    s.trim().to_string()
}

/// Normal form of a text answer: cleaned, lower case, no surrounding quotes or trailing
/// period, single spaces.
pub fn text_form(cleaned: &str) -> String {
    let mut s = cleaned.trim();
    loop {
        let before = s;
        s = s
            .trim_matches(|c| c == '"' || c == '\'' || c == '*')
            .trim()
            .trim_end_matches('.')
            .trim();
        if s == before {
            break;
        }
    }
    let s = s.to_lowercase();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(clean("\\boxed{\\dfrac{1}{2}}"), "\\frac{1}{2}");
        assert_eq!(clean("$3,000$."), "3000");
        assert_eq!(clean("1,234,567.5"), "1234567.5");
        assert_eq!(clean("1,2"), "1,2");
        assert_eq!(clean("12,34"), "12,34");
        assert_eq!(clean("\\frac12"), "\\frac{1}{2}");
        assert_eq!(clean("\\sqrt2"), "\\sqrt{2}");
        assert_eq!(clean("\\sqrt[3]{8}"), "\\sqrt[3]{8}");
        assert_eq!(clean("5\\text{ cm}"), "5 cm");
        assert_eq!(clean("10\\%"), "10%");
        assert_eq!(clean("10 percent"), "10%");
        assert_eq!(clean("90^\\circ"), "90");
        assert_eq!(clean("\\left( 1,2 \\right)"), "( 1,2 )");
        assert_eq!(text_form("  \"Yes\". "), "yes");
    }
}
