//! Structured answers: numbers and expressions, tuples, sets, intervals, unions and text.

use std::collections::BTreeSet;
use std::fmt;

use crate::clean::{clean, text_form};
use crate::expr::{Expr, MAX_DEPTH, parse_expr};
use crate::num::{Rat, Val, vals_equal};
use crate::{MAX_ELEMENTS, MAX_INPUT};

/// A parsed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A number or an expression (possibly with variables); `percent` when written with `%`.
    Num { expr: Expr, percent: bool },
    /// `(a, b)`: ordered.
    Tuple(Vec<Answer>),
    /// `\{a, b\}`: unordered.
    Set(Vec<Answer>),
    /// `a, b` (also "a and b", "a or b"): unordered, and equal to a tuple with the same order.
    List(Vec<Answer>),
    /// `[a, b)` and friends; a `(a, b)` is read as a tuple, which equals the open interval.
    Interval {
        lo: Box<Answer>,
        hi: Box<Answer>,
        lo_closed: bool,
        hi_closed: bool,
    },
    /// `A \cup B`: unordered.
    Union(Vec<Answer>),
    /// Anything else, in [`text_form`].
    Text(String),
}

/// An element of a list before assignments are resolved.
enum Elem {
    Plain(Answer),
    /// `x = 5` (several names for `x = y = 0`).
    Assign(Vec<String>, Answer),
}

/// Parses an answer string (a `\boxed{}`, `$...$` and the like are unwrapped first).
pub fn parse_answer(s: &str) -> Answer {
    if s.len() > MAX_INPUT {
        return Answer::Text(text_form(s));
    }
    let c = clean(s);
    parse_cleaned(&c, 0)
}

fn parse_cleaned(s: &str, depth: usize) -> Answer {
    let s = s.trim();
    if depth > MAX_DEPTH / 4 || s.is_empty() {
        return Answer::Text(text_form(s));
    }
    match parse_elem(s, depth) {
        Elem::Plain(a) => a,
        Elem::Assign(names, a) if names.len() > 1 => {
            Answer::Tuple(names.iter().map(|_| a.clone()).collect())
        }
        Elem::Assign(_, a) => a,
    }
}

/// Splits `s` at top-level occurrences of `sep` (outside brackets); `None` when there is none.
fn split_top<'a>(s: &'a str, seps: &[&str]) -> Option<Vec<&'a str>> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        if depth == 0
            && let Some(sep) = seps.iter().find(|sep| {
                s[i..].starts_with(**sep)
                    && (!sep.starts_with(' ') || s.is_char_boundary(i + sep.len()))
            })
        {
            parts.push(&s[start..i]);
            i += sep.len();
            start = i;
            continue;
        }
        i += 1;
        while i < b.len() && !s.is_char_boundary(i) {
            i += 1;
        }
    }
    if parts.is_empty() || parts.len() >= MAX_ELEMENTS {
        return None;
    }
    parts.push(&s[start..]);
    Some(parts)
}

/// `s` is one bracketed group from its first to its last character: (open, inner, close).
fn whole_group(s: &str) -> Option<(&str, &str, &str)> {
    let (open, rest) = if let Some(r) = s.strip_prefix("\\{") {
        ("\\{", r)
    } else {
        let c = s.chars().next()?;
        if !matches!(c, '(' | '[' | '{') {
            return None;
        }
        (&s[..1], &s[1..])
    };
    let (close, inner) = if let Some(i) = rest.strip_suffix("\\}") {
        ("\\}", i)
    } else {
        let c = rest.chars().last()?;
        if !matches!(c, ')' | ']' | '}') {
            return None;
        }
        (&rest[rest.len() - 1..], &rest[..rest.len() - 1])
    };
    // The brackets must enclose everything: depth never drops to zero inside.
    let mut depth = 0i32;
    for c in inner.bytes() {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    (depth == 0).then_some((open, inner, close))
}

fn is_name(s: &str) -> bool {
    let s = s.trim();
    let mut it = s.chars();
    let Some(first) = it.next() else { return false };
    if !first.is_ascii_alphabetic() {
        return false;
    }
    let rest: String = it.collect();
    // x, x_1, x_{n}, f(x)
    rest.is_empty()
        || (rest.starts_with('_') && rest.len() > 1 && !rest.contains(' '))
        || (rest.starts_with('(')
            && rest.ends_with(')')
            && rest[1..rest.len() - 1]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == ','))
}

/// Cuts a top-level `=` (not `<=`, `>=`, `!=`) chain.
fn split_equals(s: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let b = s.as_bytes();
    for i in 0..b.len() {
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b'=' if depth == 0 && (i == 0 || !matches!(b[i - 1], b'<' | b'>' | b'!')) => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if parts.is_empty() {
        return None;
    }
    parts.push(&s[start..]);
    Some(parts)
}

fn parse_elem(s: &str, depth: usize) -> Elem {
    let s = s.trim();
    let text = || Elem::Plain(Answer::Text(text_form(s)));
    if depth > MAX_DEPTH / 4 || s.is_empty() {
        return text();
    }
    // Unions of intervals or sets.
    if let Some(parts) = split_top(s, &["\\cup"]) {
        return Elem::Plain(Answer::Union(
            parts.iter().map(|p| parse_cleaned(p, depth + 1)).collect(),
        ));
    }
    // `x \in [0, 1)`.
    if let Some((lhs, rhs)) = s.split_once("\\in ").or_else(|| s.split_once("\\in["))
        && is_name(lhs)
    {
        let rhs = if s.contains("\\in[") {
            format!("[{rhs}")
        } else {
            rhs.to_string()
        };
        return Elem::Assign(vec![lhs.trim().to_string()], parse_cleaned(&rhs, depth + 1));
    }
    // Bare lists: `1, 2`, `1 and 19`, `f(x)=0 or f(x)=1`.
    if let Some(parts) = split_top(s, &[",", " and ", " or "]) {
        let elems: Vec<Elem> = parts.iter().map(|p| parse_elem(p, depth + 1)).collect();
        let prose = elems.iter().any(|e| {
            matches!(
                e,
                Elem::Plain(Answer::Text(_)) | Elem::Assign(_, Answer::Text(_))
            )
        });
        if prose {
            return text();
        }
        return Elem::Plain(collect_list(elems, Answer::List));
    }
    // Assignments: `x = 5`, `x = y = 0`, `(x, y) = (1, 2)`; `3 + 4 = 7` keeps the last side.
    if let Some(parts) = split_equals(s) {
        let (names, value) = parts.split_at(parts.len() - 1);
        let value = parse_cleaned(value[0], depth + 1);
        if names.iter().all(|n| is_name(n)) {
            return Elem::Assign(names.iter().map(|n| n.trim().to_string()).collect(), value);
        }
        if let [lhs] = names
            && let Some(("(", inner, ")")) = whole_group(lhs.trim())
            && let Some(vars) = split_top(inner, &[","])
            && vars.iter().all(|v| is_name(v))
            && let Answer::Tuple(vals) = &value
            && vals.len() == vars.len()
        {
            let mut pairs: Vec<(String, Answer)> = vars
                .iter()
                .map(|v| v.trim().to_string())
                .zip(vals.iter().cloned())
                .collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            return Elem::Plain(Answer::Tuple(pairs.into_iter().map(|(_, a)| a).collect()));
        }
        return Elem::Plain(value);
    }
    // Bracketed groups.
    if let Some((open, inner, close)) = whole_group(s) {
        if open == "\\{" || (open == "{" && close == "}" && inner.contains(',')) {
            let items = match split_top(inner, &[","]) {
                Some(p) => p.iter().map(|p| parse_elem(p, depth + 1)).collect(),
                None => vec![parse_elem(inner, depth + 1)],
            };
            return Elem::Plain(collect_list(items, Answer::Set));
        }
        if let Some(parts) = split_top(inner, &[","]) {
            let bracket_pair = open == "[" || close == "]";
            if parts.len() == 2
                && bracket_pair
                && matches!(open, "(" | "[")
                && matches!(close, ")" | "]")
            {
                return Elem::Plain(Answer::Interval {
                    lo: Box::new(parse_cleaned(parts[0], depth + 1)),
                    hi: Box::new(parse_cleaned(parts[1], depth + 1)),
                    lo_closed: open == "[",
                    hi_closed: close == "]",
                });
            }
            if matches!(open, "(" | "[") {
                let elems = parts.iter().map(|p| parse_elem(p, depth + 1)).collect();
                return Elem::Plain(collect_list(elems, Answer::Tuple));
            }
        }
    }
    // `a \pm b`: both values.
    if s.contains("\\pm") {
        let n = s.matches("\\pm").count();
        if n > 3 {
            return text();
        }
        let mut variants = vec![String::new()];
        for (i, piece) in s.split("\\pm").enumerate() {
            if i > 0 {
                variants = variants
                    .into_iter()
                    .flat_map(|v| [format!("{v}+"), format!("{v}-")])
                    .collect();
            }
            for v in &mut variants {
                v.push_str(piece);
            }
        }
        let elems = variants.iter().map(|v| parse_elem(v, depth + 1)).collect();
        return Elem::Plain(collect_list(elems, Answer::List));
    }
    Elem::Plain(parse_scalar(s))
}

/// Elements of a list: all `name = value` with distinct names -> a tuple in name order; else
/// the values, each list from a `\pm` flattened into the collection.
fn collect_list(elems: Vec<Elem>, make: fn(Vec<Answer>) -> Answer) -> Answer {
    let all_assign = elems.iter().all(|e| matches!(e, Elem::Assign(..)));
    if all_assign && elems.len() > 1 {
        let mut pairs: Vec<(String, Answer)> = Vec::new();
        for e in &elems {
            if let Elem::Assign(names, v) = e {
                for n in names {
                    pairs.push((n.clone(), v.clone()));
                }
            }
        }
        let distinct: BTreeSet<&String> = pairs.iter().map(|p| &p.0).collect();
        if distinct.len() == pairs.len() {
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            return Answer::Tuple(pairs.into_iter().map(|(_, a)| a).collect());
        }
    }
    let unordered = matches!(make(vec![]), Answer::List(_) | Answer::Set(_));
    let mut out = Vec::new();
    for e in elems {
        let a = match e {
            Elem::Plain(a) => a,
            Elem::Assign(names, v) if names.len() > 1 => {
                Answer::Tuple(names.iter().map(|_| v.clone()).collect())
            }
            Elem::Assign(_, v) => v,
        };
        match a {
            Answer::List(inner) if unordered => out.extend(inner),
            a => out.push(a),
        }
    }
    make(out)
}

/// A number, mixed number, percentage, quantity with units, expression or text.
fn parse_scalar(s: &str) -> Answer {
    let (s, percent) = match s.strip_suffix('%') {
        Some(r) => (r.trim(), true),
        None => (s, false),
    };
    if let Some(r) = mixed_number(s) {
        return Answer::Num {
            expr: Expr::Num(r),
            percent,
        };
    }
    // Prose: letters only (no digits, operators or commands) and a word of two or more letters.
    let has_word = s
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|w| w.len() >= 2);
    let mathy = s
        .chars()
        .any(|c| c.is_ascii_digit() || "+-*/^()[]{}\\_!=".contains(c));
    if has_word && !mathy {
        return Answer::Text(text_form(s));
    }
    // Units: a variable-free number followed by one to three words ("5 cm", "12 square feet").
    for num in unit_heads(s) {
        if let Ok(expr) = parse_expr(num) {
            let mut vars = BTreeSet::new();
            expr.vars(&mut vars);
            if vars.is_empty() {
                return Answer::Num { expr, percent };
            }
        }
    }
    if let Ok(expr) = parse_expr(s) {
        return Answer::Num { expr, percent };
    }
    Answer::Text(text_form(s))
}

/// "12 square feet" -> ["12 square", "12"]: the text before the last one, two and three
/// unit-like words (letters, two or more, with an optional `^2` or `/h`).
fn unit_heads(s: &str) -> Vec<&str> {
    let words: Vec<&str> = s.split(' ').collect();
    let mut heads = Vec::new();
    for k in 1..=3.min(words.len().saturating_sub(1)) {
        let (head, tail) = words.split_at(words.len() - k);
        let unit_like = tail.iter().all(|w| {
            let w = w.trim_end_matches(['.', ',']);
            let base = w.split(['^', '/']).next().unwrap_or("");
            base.len() >= 2
                && base.chars().all(|c| c.is_ascii_alphabetic())
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '^' || c == '/')
        });
        if !unit_like {
            break;
        }
        let head_len: usize = head.iter().map(|w| w.len() + 1).sum::<usize>() - 1;
        heads.push(&s[..head_len]);
    }
    heads
}

/// `2 1/2` or `2\frac{1}{2}` (a whole number and a proper fraction) -> 5/2.
fn mixed_number(s: &str) -> Option<Rat> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(r) => (true, r.trim_start()),
        None => (false, s),
    };
    let digits = body.find(|c: char| !c.is_ascii_digit())?;
    if digits == 0 || digits > 18 {
        return None;
    }
    let whole: i128 = body[..digits].parse().ok()?;
    let rest = &body[digits..];
    let (n, d) = if let Some(r) = rest.strip_prefix("\\frac{") {
        let (n, r) = r.split_once("}{")?;
        (n, r.strip_suffix('}')?)
    } else {
        let r = rest.strip_prefix(' ')?;
        r.split_once('/')?
    };
    let ok = |x: &str| !x.is_empty() && x.len() <= 18 && x.chars().all(|c| c.is_ascii_digit());
    if !ok(n) || !ok(d) {
        return None;
    }
    let (n, d): (i128, i128) = (n.parse().ok()?, d.parse().ok()?);
    if d == 0 || n >= d {
        return None;
    }
    let v = Rat::int(whole).checked_add(Rat::new(n, d)?)?;
    if neg { v.checked_neg() } else { Some(v) }
}

/// Points at which expressions with variables are compared: small integers (so that `n!`,
/// `floor` and `C(n, k)` are defined and the values stay exact), different per variable and
/// point, odd and even.
fn points(vars: &BTreeSet<String>) -> Vec<Vec<(String, Val)>> {
    const VALUES: [i128; 11] = [3, 7, 4, 9, 6, 11, 5, 8, 13, 10, 12];
    (0..5)
        .map(|k| {
            vars.iter()
                .enumerate()
                .map(|(j, v)| {
                    (
                        v.clone(),
                        Val::Exact(Rat::int(VALUES[(2 * k + 3 * j) % VALUES.len()])),
                    )
                })
                .collect()
        })
        .collect()
}

fn expr_equal(a: &Expr, b: &Expr) -> bool {
    let (mut va, mut vb) = (BTreeSet::new(), BTreeSet::new());
    a.vars(&mut va);
    b.vars(&mut vb);
    if va != vb {
        return false;
    }
    if va.is_empty() {
        return vals_equal(a.eval(&[]), b.eval(&[]));
    }
    let mut defined = 0;
    for env in points(&va) {
        let (x, y) = (a.eval(&env), b.eval(&env));
        if x.f().is_nan() && y.f().is_nan() {
            continue;
        }
        if !vals_equal(x, y) {
            return false;
        }
        defined += 1;
    }
    defined >= 2
}

fn percent_of(e: &Expr) -> Expr {
    Expr::Div(Box::new(e.clone()), Box::new(Expr::Num(Rat::int(100))))
}

/// Unordered equality: every element of each side equals one of the other's.
fn same_elements(a: &[Answer], b: &[Answer]) -> bool {
    a.iter().all(|x| b.iter().any(|y| equal(x, y)))
        && b.iter().all(|y| a.iter().any(|x| equal(x, y)))
}

fn in_order(a: &[Answer], b: &[Answer]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equal(x, y))
}

/// Whether two parsed answers are the same.
pub fn equal(a: &Answer, b: &Answer) -> bool {
    use Answer::*;
    let structural = match (a, b) {
        (
            Num {
                expr: x,
                percent: p,
            },
            Num {
                expr: y,
                percent: q,
            },
        ) => {
            expr_equal(x, y)
                || (*p && !*q && expr_equal(&percent_of(x), y))
                || (*q && !*p && expr_equal(x, &percent_of(y)))
        }
        (Tuple(x), Tuple(y)) => in_order(x, y),
        (Set(x) | List(x), Set(y) | List(y)) | (Union(x), Union(y)) => same_elements(x, y),
        (List(x), Tuple(y)) | (Tuple(x), List(y)) => in_order(x, y),
        (
            Interval {
                lo,
                hi,
                lo_closed,
                hi_closed,
            },
            Interval {
                lo: l2,
                hi: h2,
                lo_closed: c1,
                hi_closed: c2,
            },
        ) => lo_closed == c1 && hi_closed == c2 && equal(lo, l2) && equal(hi, h2),
        (
            Interval {
                lo,
                hi,
                lo_closed: false,
                hi_closed: false,
            },
            Tuple(t),
        )
        | (
            Tuple(t),
            Interval {
                lo,
                hi,
                lo_closed: false,
                hi_closed: false,
            },
        ) => t.len() == 2 && equal(lo, &t[0]) && equal(hi, &t[1]),
        (Union(u), x) | (x, Union(u)) if u.len() == 1 => equal(&u[0], x),
        (Set(s) | List(s), x) | (x, Set(s) | List(s))
            if s.len() == 1 && !matches!(x, Set(_) | List(_)) =>
        {
            equal(&s[0], x)
        }
        (Text(x), Text(y)) => x == y,
        _ => false,
    };
    structural || a.to_string() == b.to_string()
}

fn join(f: &mut fmt::Formatter<'_>, items: &[Answer]) -> fmt::Result {
    for (i, a) in items.iter().enumerate() {
        if i > 0 {
            write!(f, ", ")?;
        }
        write!(f, "{a}")?;
    }
    Ok(())
}

/// The normal form: exact values as integers or reduced fractions, other expressions in a
/// canonical plain-text syntax, collections with their brackets, text in lower case.
impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Num { expr, percent } => {
                let mut vars = BTreeSet::new();
                expr.vars(&mut vars);
                match (vars.is_empty(), expr.eval(&[])) {
                    (true, Val::Exact(r)) => write!(f, "{r}")?,
                    _ => write!(f, "{expr}")?,
                }
                if *percent {
                    write!(f, "%")?;
                }
                Ok(())
            }
            Answer::Tuple(x) => {
                write!(f, "(")?;
                join(f, x)?;
                write!(f, ")")
            }
            Answer::Set(x) => {
                write!(f, "{{")?;
                join(f, x)?;
                write!(f, "}}")
            }
            Answer::List(x) => join(f, x),
            Answer::Interval {
                lo,
                hi,
                lo_closed,
                hi_closed,
            } => write!(
                f,
                "{}{lo}, {hi}{}",
                if *lo_closed { '[' } else { '(' },
                if *hi_closed { ']' } else { ')' }
            ),
            Answer::Union(x) => {
                for (i, a) in x.iter().enumerate() {
                    if i > 0 {
                        write!(f, " U ")?;
                    }
                    write!(f, "{a}")?;
                }
                Ok(())
            }
            Answer::Text(t) => write!(f, "{t}"),
        }
    }
}
