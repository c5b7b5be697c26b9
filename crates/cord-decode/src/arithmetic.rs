//! The arithmetic of a step: equalities between numeric expressions (`16 / 2 = 8`,
//! `3 \times 4 = 12`, chains such as `16 = 16 * 2 = 32`) evaluated with cord-verify's parser.
//!
//! The check is deliberately conservative: it only judges an equality when both sides are
//! plain numbers and operators written right next to the `=` (units, variables, percentages,
//! words such as "of" before the left side, or more numbers after the right side in the same
//! clause make it look away), and one side is a computation, not just a number. It is used by
//! the candidate filter (`[filter] check_arithmetic`): a step that states `16 * 2 = 8` is
//! rejected before it is scored, because the answer-predictability score cannot see that a
//! step's arithmetic is false (README, "Wrong arithmetic").

use cord_verify::expr::parse_expr;

/// Characters a side of an equality may consist of (after normalisation).
fn numeric_char(c: char) -> bool {
    c.is_ascii_digit()
        || matches!(
            c,
            '.' | ',' | '+' | '-' | '*' | '/' | '^' | '(' | ')' | ' ' | UNIT
        )
}

/// Stands where [`strip_units`] removed a unit word, so that a side can tell a quantity
/// (`4 pens`) from a bare number.
const UNIT: char = '\u{1f}';

/// Words that, right before a left side, make it part of a larger expression written in words
/// (`20% of 50 = 10`, `half of 16 = 8`, `3 times 4 = 12`).
const OPERATOR_WORDS: &[&str] = &[
    "of", "times", "by", "plus", "minus", "over", "per", "half", "twice", "double", "triple",
    "and", "into", "from", "than", "less", "more", "x",
];

/// The first false equality of a step, as written (e.g. `16 = 16 * 2 = 32` gives
/// `"16 = 16 * 2"`), or `None` when every equality it can judge holds.
pub fn false_equality(body: &str) -> Option<String> {
    body.lines().find_map(false_equality_in_line)
}

fn false_equality_in_line(line: &str) -> Option<String> {
    if line.contains(['≠', '≈', '<', '>', '!', '%', '≤', '≥']) || line.contains("==") {
        return None;
    }
    let line = normalise(line);
    let pieces: Vec<&str> = line.split('=').collect();
    for pair in pieces.windows(2) {
        let Some(lhs) = left_side(pair[0]) else {
            continue;
        };
        let Some(rhs) = right_side(pair[1]) else {
            continue;
        };
        if !has_operator(&lhs) && !has_operator(&rhs) {
            continue;
        }
        // A lone quantity with its unit is a label, not a value: `4 pens = $1.5 * 4 = $6`
        // says what four pens cost.
        if !has_operator(&lhs) && lhs.contains(UNIT) {
            continue;
        }
        let (lhs, rhs) = (lhs.replace(UNIT, ""), rhs.replace(UNIT, ""));
        let (lc, rc) = (cord_verify::clean(&lhs), cord_verify::clean(&rhs));
        let (Some(l), Some(r)) = (value(&lc), value(&rc)) else {
            continue;
        };
        // A result written as a decimal may be rounded or truncated in its last place
        // (10 / 3 = 3.33, 2 / 3 = 0.66); an operand in a computation rounded to its last place
        // (7 * 17.14 = 120, but not 0.5 * 36 = 16); integers are exact.
        let tol = slack(&lc, l) + slack(&rc, r) + 1e-9 * l.abs().max(r.abs()).max(1.0);
        if (l - r).abs() > tol {
            return Some(format!("{} = {}", lhs.trim(), rhs.trim()));
        }
    }
    None
}

/// Markdown emphasis and math delimiters dropped; `×`, `\times`, `\cdot`, `÷`, `\div`, `−` and
/// an `x` between two numbers written as ASCII operators; `\frac{a}{b}` with numeric arguments
/// as `(a)/(b)`.
fn normalise(line: &str) -> String {
    let mut s = strip_list_marker(line).replace("**", "");
    for (from, to) in [
        ("\\times", "*"),
        ("\\cdot", "*"),
        ("\\div", "/"),
        ("\\left", ""),
        ("\\right", ""),
        ("\\(", ""),
        ("\\)", ""),
        ("\\[", ""),
        ("\\]", ""),
        ("\\$", ""),
        ("$", ""),
        ("×", "*"),
        ("·", "*"),
        ("÷", "/"),
        ("−", "-"),
    ] {
        s = s.replace(from, to);
    }
    let s = strip_units(&fracs(&s));
    // `16 x 2`: an x with a number on each side (spaces allowed) is a multiplication.
    let c: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    for (i, &ch) in c.iter().enumerate() {
        if (ch == 'x' || ch == 'X') && i > 0 {
            let before = c[..i].iter().rev().find(|x| **x != ' ');
            let after = c[i + 1..].iter().find(|x| **x != ' ');
            let word_before = i > 0 && c[i - 1].is_ascii_alphabetic();
            let word_after = c.get(i + 1).is_some_and(char::is_ascii_alphabetic);
            if !word_before
                && !word_after
                && before.is_some_and(|b| b.is_ascii_digit() || *b == ')')
                && after.is_some_and(|a| a.is_ascii_digit() || *a == '(')
            {
                out.push('*');
                continue;
            }
        }
        out.push(ch);
    }
    out
}

/// A list marker at the start of a line (`3. `, `2) `, after markdown `#`, `*`, `-`, `>`),
/// which is not an operand: `1. 5 * 3 = 15`.
fn strip_list_marker(line: &str) -> &str {
    let t =
        line.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '#' | '*' | '-' | '>'));
    let digits = t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits > 0
        && let Some(rest) = t[digits..].strip_prefix(['.', ')'])
        && rest.starts_with(' ')
    {
        return rest;
    }
    line
}

/// Unit words after numbers dropped (`20 inches * 10 inches = 200 inches` → `20 * 10 = 200`)
/// when the line uses a single unit (plural or not) and each unit word is followed by an
/// operator, `=`, a closing parenthesis or the end of a clause. With two different units
/// (`2 hours + 30 minutes = 2.5 hours`) the line is left as is, and its sides then do not read
/// as numbers.
fn strip_units(line: &str) -> String {
    let c: Vec<char> = line.chars().collect();
    let mut spans = Vec::new(); // (start, end) of each unit word and the spaces before it
    let mut unit: Option<String> = None;
    let mut i = 0;
    while i < c.len() {
        if !c[i].is_ascii_digit() || c.get(i + 1).is_some_and(char::is_ascii_digit) {
            i += 1;
            continue;
        }
        // c[i] ends a number.
        let mut j = i + 1;
        while j < c.len() && c[j] == ' ' {
            j += 1;
        }
        let w0 = j;
        while j < c.len() && c[j].is_ascii_alphabetic() {
            j += 1;
        }
        if j - w0 < 2 || w0 == i + 1 {
            i += 1;
            continue;
        }
        let word: String = c[w0..j].iter().collect::<String>().to_ascii_lowercase();
        let mut k = j;
        while k < c.len() && c[k] == ' ' {
            k += 1;
        }
        let ends = match c.get(k) {
            None => true,
            Some('+' | '-' | '*' | '/' | '^' | '=' | ')') => true,
            Some('.' | ',' | ';' | ':') => c.get(k + 1).is_none_or(|n| *n == ' '),
            _ => false,
        };
        if !ends || OPERATOR_WORDS.contains(&word.as_str()) {
            i = j;
            continue;
        }
        let stem = word.trim_end_matches('s').trim_end_matches('e').to_string();
        match &unit {
            Some(u) if *u != stem => return line.to_string(),
            _ => unit = Some(stem),
        }
        spans.push((i + 1, j));
        i = j;
    }
    let mut out = String::with_capacity(line.len());
    let mut at = 0;
    for (a, b) in spans {
        out.extend(&c[at..a]);
        out.push(UNIT);
        at = b;
    }
    out.extend(&c[at..]);
    out
}

/// `\frac{12}{4}` → `(12)/(4)` when both arguments are numeric; anything else is left as is
/// (and then makes the side unreadable, so the equality is not judged).
fn fracs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("\\frac{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 6..];
        let parsed = after.split_once('}').and_then(|(num, r)| {
            let r = r.strip_prefix('{')?;
            let (den, r) = r.split_once('}')?;
            let plain = |t: &str| !t.is_empty() && t.chars().all(numeric_char);
            (plain(num) && plain(den)).then(|| (format!("({num})/({den})"), r))
        });
        match parsed {
            Some((frac, r)) => {
                out.push_str(&frac);
                rest = r;
            }
            None => {
                out.push_str("\\frac{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The numeric expression that ends a piece (what is written right before an `=`), if the
/// text before it does not make it part of something larger.
fn left_side(piece: &str) -> Option<String> {
    let piece = piece.trim_end();
    let start = piece
        .char_indices()
        .rev()
        .take_while(|(_, c)| numeric_char(*c))
        .last()
        .map(|(i, _)| i)?;
    let start = start + (piece[start..].len() - piece[start..].trim_start().len());
    let glued = piece[..start].ends_with(|c: char| c.is_ascii_alphabetic());
    if glued {
        return None;
    }
    let mut side = piece[start..].trim();
    // A clause or sentence ends at `. ` / `, ` / `; `: only what follows is the left side.
    for stop in [". ", ", "] {
        if let Some(at) = side.rfind(stop) {
            side = side[at + stop.len()..].trim_start();
        }
    }
    let before = piece[..start].trim_end();
    // A markdown bullet (`- 5 * 3`, `* 5 * 3`) or a leading sign of a list is not an operand.
    for bullet in ["- ", "* ", "+ "] {
        if let Some(s) = side.strip_prefix(bullet) {
            side = s.trim_start();
        }
    }
    side = side.trim_start_matches([',', '.']).trim_start();
    if !side.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    if let Some(last) = before.chars().last() {
        if last.is_ascii_alphanumeric() {
            let word = before
                .rsplit(|c: char| !c.is_ascii_alphabetic())
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            if before.ends_with(|c: char| c.is_ascii_digit())
                || OPERATOR_WORDS.contains(&word.as_str())
            {
                return None;
            }
        } else if matches!(
            last,
            '\\' | '{' | '}' | '_' | '^' | '[' | '|' | '\'' | '"' | '#'
        ) {
            return None;
        }
    }
    Some(side.to_string())
}

/// The numeric expression that starts a piece (what is written right after an `=`), if nothing that changes its meaning follows it in
/// the same clause (a letter glued to it, or another number: `15 hours and 30 minutes`).
fn right_side(piece: &str) -> Option<String> {
    let piece = piece.trim_start();
    let end = piece
        .char_indices()
        .find(|(_, c)| !numeric_char(*c))
        .map_or(piece.len(), |(i, _)| i);
    let mut side = piece[..end].trim_end();
    let mut rest = &piece[end..];
    // A clause ends at `,` / `;` / `. `; those characters may have been taken into the side.
    for stop in [", ", ". "] {
        if let Some(at) = side.find(stop) {
            rest = "";
            side = side[..at].trim_end();
        }
    }
    side = side.trim_end_matches(['.', ',']).trim_end();
    if !side.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let glued = !piece[..end].ends_with(' ');
    if glued && rest.starts_with(|c: char| c.is_ascii_alphabetic() || matches!(c, '\\' | '{' | '_'))
    {
        return None;
    }
    let clause_end = rest
        .char_indices()
        .find(|&(i, c)| {
            matches!(c, ',' | ';' | '\n')
                || (c == '.' && !rest[i + 1..].starts_with(|d: char| d.is_ascii_digit()))
        })
        .map_or(rest.len(), |(i, _)| i);
    if rest[..clause_end].contains(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some(side.to_string())
}

fn has_operator(side: &str) -> bool {
    let s = side.trim().trim_start_matches('-');
    s.contains(['+', '-', '*', '/', '^'])
}

/// How much the value of a cleaned side can move when each decimal number in it is off in its
/// last written place: by one unit for a side that is a single number (rounded or truncated),
/// by half a unit for the operands of a computation (rounded); the sum over those numbers.
fn slack(side: &str, v: f64) -> f64 {
    let unit = if has_operator(side) { 0.5 } else { 1.0 };
    let b = side.as_bytes();
    let mut total = 0.0;
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        let num = &side[start..i];
        let Some((_, frac)) = num.split_once('.') else {
            continue;
        };
        let (Ok(x), d) = (num.parse::<f64>(), frac.len()) else {
            continue;
        };
        if d == 0 {
            continue;
        }
        let moved = format!(
            "{}{:.*}{}",
            &side[..start],
            d + 1,
            x + unit * 10f64.powi(-(d as i32)),
            &side[i..]
        );
        if let Some(w) = value(&moved) {
            total += (w - v).abs() * 1.0001;
        }
    }
    total
}

/// The value of a cleaned side without variables, if it parses and is finite.
fn value(cleaned: &str) -> Option<f64> {
    let e = parse_expr(cleaned).ok()?;
    let mut vars = std::collections::BTreeSet::new();
    e.vars(&mut vars);
    if !vars.is_empty() {
        return None;
    }
    let v = e.eval(&[]).f();
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn false_equalities_are_found() {
        for (text, expect) in [
            ("16 = 16 * 2 = 32", "16 = 16 * 2"),
            ("So 16 x 2 = 30 balls.", "16 * 2 = 30"),
            ("She pays $5 \\times 3 = $16.", "5 * 3 = 16"),
            ("- 12 / 4 = 4", "12 / 4 = 4"),
            ("Total: 1,200 + 300 = 1,600 dollars", "1,200 + 300 = 1,600"),
            ("\\frac{12}{4} = 4", "(12)/(4) = 4"),
            ("Then 2 / 3 = 0.5", "2 / 3 = 0.5"),
            ("**7 * 8 = 54**", "7 * 8 = 54"),
            ("7 / 2 = 3", "7 / 2 = 3"),
            ("The cost is 5 * 3 = 16 dollars.", "5 * 3 = 16"),
            ("2. 4 + 4 = 9", "4 + 4 = 9"),
            ("- 16 inches * 10 inches = 16 inches", "16 * 10 = 16"),
            ("12 eggs / 2 = 5 eggs", "12 / 2 = 5"),
            ("7 * 13.6 = 104.9", "7 * 13.6 = 104.9"),
            ("1000 + 0.5 = 1001", "1000 + 0.5 = 1001"),
            // gsm8k-1021: the pool's step 3.
            (
                "\\[ \\text{Probability of guessing correctly} = 0.5 \\times 36 = 16 \\]",
                "0.5 * 36 = 16",
            ),
        ] {
            assert_eq!(false_equality(text).as_deref(), Some(expect), "{text}");
        }
    }

    #[test]
    fn true_or_unjudgeable_equalities_pass() {
        for text in [
            "16 / 2 = 8 golf balls",
            "16 = 8 * 2 = 16",
            "10 / 3 = 3.33",
            "2 / 3 = 0.66 (rounded down)",
            "1 hour = 60 minutes",
            "20% of 50 = 10",
            "half of 16 = 8",
            "x = 5 * 3 = 15",
            "2x = 10",
            "930 / 60 = 15 hours and 30 minutes",
            "The answer: 3 apples * 2 = 6",
            "Step 4 = 8",
            "5 + 3 = 8, and 8 * 2 = 16.",
            "3 times 4 = 12",
            "1:30 = 90 minutes",
            "a + b = 12",
            "5! = 120",
            "x^2 + 3 = 12",
            "3 + 4 = 7\n\n4 + 4 = 8",
            "\\frac{a}{2} = 3",
            "0.2 * 40 = 8",
            "2^10 = 1024",
            "6 * (3 + 4) = 42",
            "1. 5 * 3 = 15",
            "2 hours + 30 minutes = 2.5 hours",
            "20 inches * 10 inches = 200 inches",
            "- 10 feet * 10 inches = 100 inches",
            "3 hours 30 minutes = 210",
            "1 km + 500 m = 1.5 km",
            // gsm8k-158: SmolLM2's step 1, the cost of four pens.
            "### Step 1. 4 pens = $1.5 * 4 = $6.00",
            "It is 7. 3 * 4 = 12",
            "f(3) = 9 + 1",
            "The cost is 5 * 3 = 15 dollars.",
            "100 / 3 ≈ 33",
            "7 * 17.14 = 120",
            "1.5 * 60 = 90",
        ] {
            assert_eq!(false_equality(text), None, "{text}");
        }
    }

    #[test]
    fn later_lines_are_checked_too() {
        assert_eq!(
            false_equality("First, 3 + 4 = 7.\nThen 7 * 3 = 20.").as_deref(),
            Some("7 * 3 = 20")
        );
    }
}
