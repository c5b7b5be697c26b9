//! Final-answer checking for math problems: find the stated answer in a model's text, bring
//! it and the reference answer to a normal form, and decide whether they are the same.
//!
//! ```
//! use cord_verify::{extract_answer, verify};
//! let pred = extract_answer("... so the answer is $\\boxed{\\dfrac{1}{2}}$.").unwrap();
//! let v = verify("0.5", &pred);
//! assert!(v.equal);
//! assert_eq!((v.gold.as_str(), v.prediction.as_str()), ("1/2", "1/2"));
//! ```
//!
//! # Extraction ([`extract_answer`])
//! The last `\boxed{}` (balanced braces), a GSM8K `#### N` line, "The final answer is …" /
//! "answer is …", the last math span (`$…$`, `\(…\)`, `\[…\]`) unless a number follows it,
//! else the last stated number.
//!
//! # Normalisation ([`clean`], [`parse_answer`])
//! Removed: a wrapping `\boxed{}`, `$`, `\(` `\)`, `**`, a trailing period, `\left` / `\right`,
//! spacing macros, degrees (`^\circ`, `°`), `\$`, digit-group commas (`3,000`, `3{,}000`).
//! Rewritten: `\dfrac` / `\tfrac` -> `\frac`, `\frac12` -> `\frac{1}{2}`, `\text{…}` and
//! similar macros -> their contents, "percent" -> `%`, Unicode signs (`−`, `×`, `π`, `√`, `±`,
//! `∞`, `∪`) -> LaTeX. A number followed by one to three unit words ("5 cm", "140 minutes")
//! is the number. `x = 5`, `x \in [0, 1)` and `x = y = 0` drop the variable names (a list of
//! assignments with different names, `x=6, y=5`, is a tuple in the names' alphabetical order).
//! `a \pm b` is the list of both values. A whole number followed by a proper fraction (`2 1/2`,
//! `2\frac{1}{2}`) is a mixed number.
//!
//! # Equality ([`equal`], [`verify`])
//! - Numbers are exact rationals: integers, decimals (`0.5` = `1/2`, `.5` = `0.5`, but
//!   `0.333` ≠ `1/3`), fractions and mixed numbers.
//! - Expressions with `\sqrt`, `\pi`, powers, `n!`, `\binom`, logarithms, … are evaluated
//!   (exactly when possible, else in `f64`) and compared at a relative tolerance of 1e-9
//!   (`2\sqrt{2}` = `\sqrt{8}`). Expressions with variables must have the same variables and
//!   agree at five integer points (`n(n+1)/2` = `(n^2+n)/2`).
//! - `(a, b)` is a tuple (ordered); `\{a, b\}` a set and a bare `a, b` a list (both
//!   unordered; a list also equals a tuple in the same order); `[a, b]`, `[a, b)`, `(a, b]`
//!   are intervals whose open or closed ends must agree (the tuple `(a, b)` equals the open
//!   interval); `A \cup B` a union (unordered). One-element collections equal their element.
//! - Anything else is text, compared case-insensitively with single spaces (`Yes` = `yes.`).
//! - When the structures do not match, equal normal forms still count as equal.
//!
//! **Percentages.** `10\%` equals both `10` and `0.1`. Reference answers use both readings —
//! GSM8K's "what percentage …" questions give the bare number (`10`) while others give the
//! fraction — and a stated percentage is the same quantity as its fraction, so either reading
//! counts; two percentages compare as written (`10\%` ≠ `0.1\%`).
//!
//! # Bounds
//! Parsing is recursive descent with a depth limit ([`expr::MAX_DEPTH`]); answers longer than
//! [`MAX_INPUT`] bytes are compared as text; lists hold at most [`MAX_ELEMENTS`] elements,
//! `\pm` expands at most three times, exact powers stop at exponent 4096 and factorials at
//! 170 (larger values fall back to floating point or to "undefined"). No input panics (a
//! property test feeds arbitrary strings) and nothing needs a timeout.

mod answer;
mod clean;
pub mod expr;
mod extract;
pub mod num;

pub use answer::{Answer, equal, parse_answer};
pub use clean::clean;
pub use extract::{extract_answer, gsm8k_answer, last_boxed, last_number};

/// Longest answer (bytes) that is parsed; longer ones are compared as text. Extraction looks
/// at the last this-many bytes of a text.
pub const MAX_INPUT: usize = 4096;

/// Most elements in one list, tuple or set.
pub const MAX_ELEMENTS: usize = 256;

/// The outcome of comparing a prediction with the reference answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub equal: bool,
    /// Normal form of the reference answer.
    pub gold: String,
    /// Normal form of the prediction.
    pub prediction: String,
}

/// Compares an (already extracted) prediction with the reference answer.
pub fn verify(gold: &str, prediction: &str) -> Verdict {
    let g = parse_answer(gold);
    let p = parse_answer(prediction);
    let blank = gold.trim().is_empty() || prediction.trim().is_empty();
    Verdict {
        equal: !blank && equal(&g, &p),
        gold: g.to_string(),
        prediction: p.to_string(),
    }
}

/// Whether a predicted answer matches the reference answer (see [`verify`]).
pub fn answers_match(prediction: &str, gold: &str) -> bool {
    verify(gold, prediction).equal
}

/// Normal form of an answer (the string [`verify`] reports).
pub fn normalize(s: &str) -> String {
    parse_answer(s).to_string()
}
