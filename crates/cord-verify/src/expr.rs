//! Arithmetic expressions in LaTeX or plain text: tokens, a bounded recursive-descent parser,
//! evaluation (exact where possible) and a canonical rendering.

use std::collections::BTreeSet;
use std::fmt;

use crate::num::{Rat, Val};

/// Deepest nesting the parser follows before giving up.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Sqrt,
    Floor,
    Ceil,
    Abs,
    Ln,
    Log10,
    Exp,
    Sin,
    Cos,
    Tan,
}

impl Func {
    fn name(self) -> &'static str {
        match self {
            Func::Sqrt => "sqrt",
            Func::Floor => "floor",
            Func::Ceil => "ceil",
            Func::Abs => "abs",
            Func::Ln => "ln",
            Func::Log10 => "log",
            Func::Exp => "exp",
            Func::Sin => "sin",
            Func::Cos => "cos",
            Func::Tan => "tan",
        }
    }

    fn from_name(s: &str) -> Option<Func> {
        Some(match s {
            "sqrt" => Func::Sqrt,
            "floor" => Func::Floor,
            "ceil" => Func::Ceil,
            "abs" => Func::Abs,
            "ln" => Func::Ln,
            "log" => Func::Log10,
            "exp" => Func::Exp,
            "sin" => Func::Sin,
            "cos" => Func::Cos,
            "tan" => Func::Tan,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(Rat),
    Pi,
    Inf,
    Var(String),
    Neg(Box<Expr>),
    Add(Box<Expr>, Box<Expr>),
    Sub(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Pow(Box<Expr>, Box<Expr>),
    /// k-th root.
    Root(Box<Expr>, Box<Expr>),
    /// Logarithm in a base: (base, argument).
    LogBase(Box<Expr>, Box<Expr>),
    Fact(Box<Expr>),
    Binom(Box<Expr>, Box<Expr>),
    Call(Func, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Rat),
    Var(String),
    Func(Func),
    Frac,
    Sqrt,
    Binom,
    Log,
    Pi,
    Inf,
    Op(char),
    Open(char),
    Close(char),
    Comma,
    Under,
}

const GREEK: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "varepsilon",
    "zeta",
    "eta",
    "theta",
    "vartheta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "rho",
    "sigma",
    "tau",
    "phi",
    "varphi",
    "chi",
    "psi",
    "omega",
    "Gamma",
    "Delta",
    "Theta",
    "Lambda",
    "Sigma",
    "Phi",
    "Psi",
    "Omega",
];

/// Why an expression did not parse (it is then compared as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotMath;

fn tokenize(s: &str) -> Result<Vec<Tok>, NotMath> {
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // End and length of the last letter word: two words in a row, one of them longer than a
    // letter, are prose, not math.
    let mut last_word_end: Option<(usize, usize)> = None;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
            continue;
        }
        if ch.is_ascii_digit() || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            while i < c.len() && c[i].is_ascii_digit() {
                i += 1;
            }
            if c.get(i) == Some(&'.') && c.get(i + 1).is_some_and(char::is_ascii_digit) {
                i += 1;
                while i < c.len() && c[i].is_ascii_digit() {
                    i += 1;
                }
            } else if c.get(i) == Some(&'.')
                && start < i
                && c.get(i + 1)
                    .is_none_or(|n| !n.is_ascii_digit() && *n != '.')
            {
                // "5." is 5
                i += 1;
            }
            let text: String = c[start..i].iter().collect();
            out.push(Tok::Num(parse_decimal(text.trim_end_matches('.'))?));
            last_word_end = None;
            continue;
        }
        if ch.is_ascii_alphabetic() {
            let start = i;
            while i < c.len() && c[i].is_ascii_alphabetic() {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            if let Some((prev, prev_len)) = last_word_end
                && c[prev..start].iter().all(|x| x.is_whitespace())
                && prev < start
                && (prev_len > 1 || i - start > 1)
            {
                return Err(NotMath);
            }
            last_word_end = Some((i, i - start));
            let lower = word.to_ascii_lowercase();
            if let Some(f) = Func::from_name(&lower) {
                out.push(Tok::Func(f));
            } else if matches!(lower.as_str(), "pi") {
                out.push(Tok::Pi);
            } else if matches!(lower.as_str(), "inf" | "infty" | "infinity" | "oo") {
                out.push(Tok::Inf);
            } else if (word == "C" && c.get(i) == Some(&'(')) || lower == "binom" {
                out.push(Tok::Binom);
            } else if word.len() <= 3 {
                for l in word.chars() {
                    out.push(Tok::Var(l.to_string()));
                }
            } else {
                return Err(NotMath);
            }
            continue;
        }
        last_word_end = None;
        if ch == '\\' {
            let start = i + 1;
            i += 1;
            while i < c.len() && c[i].is_ascii_alphabetic() {
                i += 1;
            }
            let name: String = c[start..i].iter().collect();
            if name.is_empty() {
                // "\{" / "\}" are set braces: only meaningful to the structure parser.
                match c.get(i) {
                    Some('{') => out.push(Tok::Open('{')),
                    Some('}') => out.push(Tok::Close('}')),
                    _ => return Err(NotMath),
                }
                i += 1;
                continue;
            }
            let tok = match name.as_str() {
                "frac" => Tok::Frac,
                "sqrt" => Tok::Sqrt,
                "binom" | "dbinom" | "tbinom" => Tok::Binom,
                "log" => Tok::Log,
                "pi" => Tok::Pi,
                "infty" | "inf" => Tok::Inf,
                "cdot" | "times" | "ast" => Tok::Op('*'),
                "div" => Tok::Op('/'),
                n => {
                    if let Some(f) = Func::from_name(n) {
                        Tok::Func(f)
                    } else if GREEK.contains(&n) {
                        Tok::Var(format!("\\{n}"))
                    } else {
                        return Err(NotMath);
                    }
                }
            };
            out.push(tok);
            continue;
        }
        let tok = match ch {
            '+' | '-' | '*' | '/' | '^' | '!' => Tok::Op(ch),
            '(' | '[' | '{' => Tok::Open(ch),
            ')' | ']' | '}' => Tok::Close(ch),
            ',' => Tok::Comma,
            '_' => Tok::Under,
            _ => return Err(NotMath),
        };
        out.push(tok);
        i += 1;
    }
    Ok(out)
}

/// "12.50" -> 25/2 exactly (up to 36 digits; longer is not an exact number).
fn parse_decimal(s: &str) -> Result<Rat, NotMath> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.len() + frac.len() > 36 || int.len() + frac.len() == 0 {
        return Err(NotMath);
    }
    let digits = format!("{int}{frac}");
    let n: i128 = digits.parse().map_err(|_| NotMath)?;
    let d = 10i128.checked_pow(frac.len() as u32).ok_or(NotMath)?;
    Rat::new(n, d).ok_or(NotMath)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

type PResult = Result<Expr, NotMath>;

fn b(e: Expr) -> Box<Expr> {
    Box::new(e)
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Result<(), NotMath> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err(NotMath)
        } else {
            Ok(())
        }
    }

    fn expr(&mut self) -> PResult {
        self.enter()?;
        let mut lhs = self.term()?;
        loop {
            if self.eat(&Tok::Op('+')) {
                lhs = Expr::Add(b(lhs), b(self.term()?));
            } else if self.eat(&Tok::Op('-')) {
                lhs = Expr::Sub(b(lhs), b(self.term()?));
            } else {
                break;
            }
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn starts_primary(t: Option<&Tok>) -> bool {
        matches!(
            t,
            Some(
                Tok::Num(_)
                    | Tok::Var(_)
                    | Tok::Func(_)
                    | Tok::Frac
                    | Tok::Sqrt
                    | Tok::Binom
                    | Tok::Log
                    | Tok::Pi
                    | Tok::Inf
                    | Tok::Open('(')
                    | Tok::Open('{')
                    | Tok::Open('[')
            )
        )
    }

    fn term(&mut self) -> PResult {
        let mut lhs = self.unary()?;
        loop {
            if self.eat(&Tok::Op('*')) {
                lhs = Expr::Mul(b(lhs), b(self.unary()?));
            } else if self.eat(&Tok::Op('/')) {
                lhs = Expr::Div(b(lhs), b(self.unary()?));
            } else if Self::starts_primary(self.peek()) {
                // Implicit product; two plain numbers in a row are not one ("1 000").
                if matches!(self.peek(), Some(Tok::Num(_))) && matches!(lhs, Expr::Num(_)) {
                    return Err(NotMath);
                }
                lhs = Expr::Mul(b(lhs), b(self.power()?));
            } else {
                break;
            }
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> PResult {
        self.enter()?;
        let e = if self.eat(&Tok::Op('-')) {
            Expr::Neg(b(self.unary()?))
        } else if self.eat(&Tok::Op('+')) {
            self.unary()?
        } else {
            self.power()?
        };
        self.depth -= 1;
        Ok(e)
    }

    fn power(&mut self) -> PResult {
        let base = self.postfix()?;
        if self.eat(&Tok::Op('^')) {
            self.enter()?;
            let exp = if matches!(self.peek(), Some(Tok::Open('{'))) {
                self.group()?
            } else {
                self.unary()?
            };
            self.depth -= 1;
            let e = Expr::Pow(b(base), b(exp));
            let mut e = e;
            while self.eat(&Tok::Op('!')) {
                e = Expr::Fact(b(e));
            }
            return Ok(e);
        }
        Ok(base)
    }

    fn postfix(&mut self) -> PResult {
        let mut e = self.primary()?;
        while self.eat(&Tok::Op('!')) {
            e = Expr::Fact(b(e));
        }
        Ok(e)
    }

    /// `{expr}` or a single primary (a LaTeX argument).
    fn group(&mut self) -> PResult {
        if self.eat(&Tok::Open('{')) {
            let e = self.expr()?;
            if !self.eat(&Tok::Close('}')) {
                return Err(NotMath);
            }
            Ok(e)
        } else {
            self.postfix()
        }
    }

    /// A function argument: `{..}`, `(..)` (a `!` after it applies to the call) or a power
    /// (`\sin 2x` reads `\sin(2)*x`).
    fn arg(&mut self) -> PResult {
        match self.peek() {
            Some(Tok::Open('{')) => self.group(),
            Some(Tok::Open('(')) => self.primary(),
            _ => self.power(),
        }
    }

    fn close_for(open: char) -> char {
        match open {
            '(' => ')',
            '[' => ']',
            _ => '}',
        }
    }

    fn primary(&mut self) -> PResult {
        self.enter()?;
        let e = match self.next().ok_or(NotMath)? {
            Tok::Num(r) => Expr::Num(r),
            Tok::Pi => Expr::Pi,
            Tok::Inf => Expr::Inf,
            Tok::Var(v) => {
                // Subscripts: x_1, x_{n+1}, a_n.
                if self.eat(&Tok::Under) {
                    let sub = match self.next().ok_or(NotMath)? {
                        Tok::Num(r) => r.to_string(),
                        Tok::Var(s) => s,
                        Tok::Open('{') => {
                            let e = self.expr()?;
                            if !self.eat(&Tok::Close('}')) {
                                return Err(NotMath);
                            }
                            e.to_string()
                        }
                        _ => return Err(NotMath),
                    };
                    Expr::Var(format!("{v}_{sub}"))
                } else {
                    Expr::Var(v)
                }
            }
            Tok::Open(o) => {
                let e = self.expr()?;
                if !self.eat(&Tok::Close(Self::close_for(o))) {
                    return Err(NotMath);
                }
                e
            }
            Tok::Frac => {
                let a = self.group()?;
                let d = self.group()?;
                Expr::Div(b(a), b(d))
            }
            Tok::Sqrt => {
                let k = if self.eat(&Tok::Open('[')) {
                    let k = self.expr()?;
                    if !self.eat(&Tok::Close(']')) {
                        return Err(NotMath);
                    }
                    k
                } else {
                    Expr::Num(Rat::int(2))
                };
                let x = self.arg()?;
                Expr::Root(b(x), b(k))
            }
            Tok::Binom => {
                if self.eat(&Tok::Open('(')) {
                    let n = self.expr()?;
                    if !self.eat(&Tok::Comma) {
                        return Err(NotMath);
                    }
                    let k = self.expr()?;
                    if !self.eat(&Tok::Close(')')) {
                        return Err(NotMath);
                    }
                    Expr::Binom(b(n), b(k))
                } else {
                    let n = self.group()?;
                    let k = self.group()?;
                    Expr::Binom(b(n), b(k))
                }
            }
            Tok::Log => {
                if self.eat(&Tok::Under) {
                    let base = self.group()?;
                    let x = self.arg()?;
                    Expr::LogBase(b(base), b(x))
                } else {
                    Expr::Call(Func::Log10, b(self.arg()?))
                }
            }
            Tok::Func(f) => Expr::Call(f, b(self.arg()?)),
            _ => return Err(NotMath),
        };
        self.depth -= 1;
        Ok(e)
    }
}

/// Parses a cleaned expression (see [`crate::clean`]).
pub fn parse_expr(s: &str) -> Result<Expr, NotMath> {
    let toks = tokenize(s)?;
    if toks.is_empty() {
        return Err(NotMath);
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return Err(NotMath);
    }
    Ok(e)
}

impl Expr {
    /// Value with the given variables (a missing variable is NaN).
    pub fn eval(&self, env: &[(String, Val)]) -> Val {
        use Expr::*;
        match self {
            Num(r) => Val::Exact(*r),
            Pi => Val::Approx(std::f64::consts::PI),
            Inf => Val::Approx(f64::INFINITY),
            Var(v) => env
                .iter()
                .find(|(n, _)| n == v)
                .map_or(Val::Approx(f64::NAN), |(_, x)| *x),
            Neg(a) => a.eval(env).negate(),
            Add(a, c) => a.eval(env).plus(c.eval(env)),
            Sub(a, c) => a.eval(env).minus(c.eval(env)),
            Mul(a, c) => a.eval(env).times(c.eval(env)),
            Div(a, c) => a.eval(env).over(c.eval(env)),
            Pow(a, c) => a.eval(env).pow(c.eval(env)),
            Root(x, k) => x.eval(env).root(k.eval(env)),
            LogBase(base, x) => Val::Approx(x.eval(env).f().ln() / base.eval(env).f().ln()),
            Fact(a) => a.eval(env).factorial(),
            Binom(n, k) => Val::binom(n.eval(env), k.eval(env)),
            Call(f, a) => {
                let v = a.eval(env);
                match f {
                    Func::Sqrt => v.root(Val::Exact(Rat::int(2))),
                    Func::Floor => v.floor(),
                    Func::Ceil => v.ceil(),
                    Func::Abs => v.abs(),
                    Func::Ln => Val::Approx(v.f().ln()),
                    Func::Log10 => Val::Approx(v.f().log10()),
                    Func::Exp => Val::Approx(v.f().exp()),
                    Func::Sin => Val::Approx(v.f().sin()),
                    Func::Cos => Val::Approx(v.f().cos()),
                    Func::Tan => Val::Approx(v.f().tan()),
                }
            }
        }
    }

    /// Names of the free variables.
    pub fn vars(&self, out: &mut BTreeSet<String>) {
        use Expr::*;
        match self {
            Num(_) | Pi | Inf => {}
            Var(v) => {
                out.insert(v.clone());
            }
            Neg(a) | Fact(a) | Call(_, a) => a.vars(out),
            Add(a, c)
            | Sub(a, c)
            | Mul(a, c)
            | Div(a, c)
            | Pow(a, c)
            | Root(a, c)
            | LogBase(a, c)
            | Binom(a, c) => {
                a.vars(out);
                c.vars(out);
            }
        }
    }

    fn prec(&self) -> u8 {
        match self {
            Expr::Add(..) | Expr::Sub(..) => 1,
            Expr::Mul(..) | Expr::Div(..) => 2,
            Expr::Neg(..) => 3,
            Expr::Pow(..) => 4,
            Expr::Num(r) if r.numer() < 0 || !r.is_integer() => 2,
            _ => 5,
        }
    }
}

fn wrap(f: &mut fmt::Formatter<'_>, e: &Expr, min: u8) -> fmt::Result {
    if e.prec() < min {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Expr::*;
        match self {
            Num(r) => write!(f, "{r}"),
            Pi => write!(f, "pi"),
            Inf => write!(f, "oo"),
            Var(v) => write!(f, "{v}"),
            Neg(a) => {
                write!(f, "-")?;
                wrap(f, a, 3)
            }
            Add(a, c) => {
                wrap(f, a, 1)?;
                write!(f, "+")?;
                wrap(f, c, 2)
            }
            Sub(a, c) => {
                wrap(f, a, 1)?;
                write!(f, "-")?;
                wrap(f, c, 2)
            }
            Mul(a, c) => {
                wrap(f, a, 2)?;
                write!(f, "*")?;
                wrap(f, c, 3)
            }
            Div(a, c) => {
                wrap(f, a, 2)?;
                write!(f, "/")?;
                wrap(f, c, 3)
            }
            Pow(a, c) => {
                wrap(f, a, 5)?;
                write!(f, "^")?;
                wrap(f, c, 5)
            }
            Root(x, k) if **k == Num(Rat::int(2)) => write!(f, "sqrt({x})"),
            Root(x, k) => write!(f, "root({x}, {k})"),
            LogBase(base, x) => write!(f, "log_{base}({x})"),
            Fact(a) => {
                wrap(f, a, 5)?;
                write!(f, "!")
            }
            Binom(n, k) => write!(f, "C({n}, {k})"),
            Call(func, a) => write!(f, "{}({a})", func.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(s: &str) -> f64 {
        parse_expr(s).unwrap().eval(&[]).f()
    }

    #[test]
    fn parses_and_evaluates() {
        assert_eq!(val("1+2*3"), 7.0);
        assert_eq!(val("-2^2"), -4.0);
        assert_eq!(val("2^3^2"), 512.0);
        assert_eq!(val("\\frac{1}{2}"), 0.5);
        assert_eq!(val(".5"), 0.5);
        assert_eq!(val("2\\sqrt{2}"), 2.0 * 2f64.sqrt());
        assert_eq!(val("\\sqrt[3]{8}"), 2.0);
        assert_eq!(val("5!"), 120.0);
        assert_eq!(val("C(10, 5)"), 252.0);
        assert_eq!(val("\\binom{10}{5}"), 252.0);
        assert_eq!(val("\\log_2 8"), 3.0);
        assert_eq!(val("(1+2)(3)"), 9.0);
        assert!(parse_expr("1 000").is_err());
        assert!(parse_expr("No integer solutions").is_err());
        assert!(
            parse_expr("yes").is_ok(),
            "three letters read as a product of variables"
        );
        assert!(parse_expr("(((").is_err());
        assert_eq!(parse_expr("x_{n+1}").unwrap(), Expr::Var("x_n+1".into()));
        assert_eq!(parse_expr("n(n+1)/2").unwrap().to_string(), "n*(n+1)/2");
    }
}
