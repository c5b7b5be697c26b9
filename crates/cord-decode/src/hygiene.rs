//! Candidate hygiene: junk steps (empty, looping, repeating an earlier step, mostly non-text)
//! are rejected before they are scored, so that they never compete with real steps.
//!
//! The rules look at the text only. Thresholds come from `[filter]` in the pool file; the
//! same rules count the degenerate steps left in written traces (`cord eval`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::search::THINK_CLOSE;

/// `[filter]`: which candidate steps are rejected before scoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Reject junk candidates (`cord synth --no-filter` turns this off: the paper's raw
    /// behaviour, where every non-empty candidate is scored).
    pub enabled: bool,
    /// A non-blank line (whitespace normalised) that occurs this many times rejects the step.
    pub max_line_repeats: usize,
    /// A line template (every run of digits read as one number) that occurs this many times
    /// and makes up at least half of the step's lines rejects the step: numbered copies such
    /// as `#### 1. Solve for X`, `#### 2. Solve for X`, ... (0 = off).
    pub max_template_repeats: usize,
    /// A step whose last `loop_tail` share of words is one n-gram repeated (at least
    /// `loop_min_repeats` times in a row) is a loop.
    pub loop_tail: f64,
    /// Longest n-gram (in words) the loop rule looks for.
    pub loop_max_ngram: usize,
    /// Copies of the n-gram in a row that make a loop.
    pub loop_min_repeats: usize,
    /// Reject a step equal (whitespace normalised) to an earlier step of the same beam.
    pub reject_repeated_step: bool,
    /// With `reject_repeated_step`: also a step of at least 8 words whose set of words
    /// overlaps an earlier step's this much (Jaccard; 1 = exact repeats only).
    pub near_repeat: f64,
    /// Letters and digits must be at least this share of the non-whitespace characters
    /// (U+FFFD replacement characters and markup such as `#`, `*`, `|` do not count).
    pub min_text_ratio: f64,
    /// Progress first: when some candidates of a step add something checkable (a number that
    /// neither the question nor the beam's earlier steps contain, a formula, or the final
    /// answer; [`makes_progress`]), the candidates that add nothing (restating the question,
    /// announcing a plan) are rejected before scoring. When no candidate of the step makes
    /// progress, all of them compete. The paper's score cannot tell these apart: a step that
    /// says nothing keeps the answer's probability at its question-only prior, while a correct
    /// intermediate result lowers it (docs/evals.md, "Junk, natural ends and the scorer").
    pub progress_first: bool,
    /// Reject a step that states a false equality between numbers (`16 * 2 = 8`; chains such
    /// as `16 = 16 * 2 = 32`), judged conservatively by [`crate::arithmetic::false_equality`]:
    /// the score rewards a step that makes the answer likely, not one whose arithmetic is
    /// right, and a small teacher's false formula can win on it.
    pub check_arithmetic: bool,
    /// Reject a step that ends inside a formula: a math block left open (`\[` or `\(` without
    /// its closing delimiter, an odd number of `$$`) and the text ending on an operator, `=`,
    /// `\times`, `\cdot`, `\div` or an open brace or parenthesis — a step cut by the step cap
    /// mid-formula, such as `\[ 10 \times` (gsm8k-740 in the README).
    pub reject_unfinished_math: bool,
    /// Reject a step that the step cap (`max_step_tokens`) cut in the middle of a paragraph
    /// (finish `step-cap-mid`: no `\n\n` to cut back to), such as "Since the rolls are
    /// independent, the" or a formula stopped before its `\]`. A cap cut at a paragraph break
    /// keeps whole paragraphs and is not rejected.
    pub reject_cut: bool,
    /// When every candidate of every live beam is rejected, also after the resample, the live
    /// beams are closed as they stand (finish `stalled`, a forced close like the think budget's)
    /// instead of being dropped: their steps all passed the filter, and a teacher that starts
    /// to loop after five sound steps should not cost the problem its trajectory. They compete
    /// with the finished trajectories by score and are answered as usual. A problem whose
    /// first step is all junk has nothing to close and is recorded as failed. The same for
    /// whole trajectories (curation, a teacher alone; `### Step` steps): one whose first
    /// degenerate step is not its first step is cut before it and closed there (finish
    /// `cut-before-junk`), then scored and compared as the shorter trajectory, instead of being
    /// discarded for its last step; the rejection is still counted.
    pub close_stalled: bool,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            enabled: true,
            max_line_repeats: 3,
            max_template_repeats: 4,
            loop_tail: 0.4,
            loop_max_ngram: 8,
            loop_min_repeats: 3,
            reject_repeated_step: true,
            near_repeat: 0.9,
            min_text_ratio: 0.3,
            progress_first: true,
            check_arithmetic: true,
            reject_unfinished_math: true,
            reject_cut: true,
            close_stalled: true,
        }
    }
}

impl FilterConfig {
    /// Checks the thresholds; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.max_template_repeats == 1 {
            return Err(Error::config(
                "filter.max_template_repeats",
                "must be 0 (off) or at least 2",
            ));
        }
        if self.max_line_repeats < 2 {
            return Err(Error::config(
                "filter.max_line_repeats",
                "must be at least 2 (a line occurring once is no repeat)",
            ));
        }
        if !(self.loop_tail > 0.0 && self.loop_tail <= 1.0) {
            return Err(Error::config("filter.loop_tail", "must be in (0, 1]"));
        }
        if self.loop_max_ngram == 0 {
            return Err(Error::config("filter.loop_max_ngram", "must be at least 1"));
        }
        if self.loop_min_repeats < 2 {
            return Err(Error::config(
                "filter.loop_min_repeats",
                "must be at least 2",
            ));
        }
        if !(self.near_repeat > 0.0 && self.near_repeat <= 1.0) {
            return Err(Error::config("filter.near_repeat", "must be in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.min_text_ratio) {
            return Err(Error::config("filter.min_text_ratio", "must be in [0, 1]"));
        }
        Ok(())
    }
}

/// Why a candidate step was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reject {
    /// Nothing after the header.
    Empty,
    /// One line occurs `max_line_repeats` times or more.
    RepeatedLine,
    /// The tail of the step is one n-gram repeated.
    Loop,
    /// The same text as an earlier step of the beam.
    RepeatsEarlierStep,
    /// Mostly replacement characters or markup.
    NonText,
    /// Adds nothing checkable while other candidates of the step do (`progress_first`).
    NoProgress,
    /// States a false equality between numbers (`check_arithmetic`).
    WrongArithmetic,
    /// Ends inside a formula (`reject_unfinished_math`).
    UnfinishedMath,
    /// Cut by the step cap in the middle of a paragraph (`reject_cut`).
    CutByCap,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Empty => "empty",
            Reject::RepeatedLine => "repeated-line",
            Reject::Loop => "loop",
            Reject::RepeatsEarlierStep => "repeats-earlier-step",
            Reject::NonText => "non-text",
            Reject::NoProgress => "no-progress",
            Reject::WrongArithmetic => "wrong-arithmetic",
            Reject::UnfinishedMath => "unfinished-math",
            Reject::CutByCap => "cut-by-cap",
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whitespace runs collapsed to one space, ends trimmed.
pub fn normalize_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A display or inline math block left open (more `\[` than `\]`, more `\(` than `\)`,
/// or an odd number of `$$`) with the text ending on an operator: the formula is unfinished.
fn unfinished_math(body: &str) -> bool {
    let open = body.matches("\\[").count() > body.matches("\\]").count()
        || body.matches("\\(").count() > body.matches("\\)").count()
        || body.matches("$$").count() % 2 == 1;
    let t = body.trim_end();
    open && (t.ends_with(['+', '-', '*', '/', '=', '^', '(', '{', '_'])
        || ["\\times", "\\cdot", "\\div", "\\frac", "\\sqrt"]
            .iter()
            .any(|op| t.ends_with(op)))
}

/// The body of a step: a leading `### Step N.` header and a trailing `</think>` removed.
pub fn step_body(text: &str) -> &str {
    let mut t = text.trim();
    if let Some(rest) = t.strip_prefix("### Step") {
        let rest = rest.trim_start();
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            let rest = &rest[digits..];
            t = rest.strip_prefix('.').unwrap_or(rest);
        }
    }
    let t = t.trim();
    t.strip_suffix(THINK_CLOSE).unwrap_or(t).trim()
}

/// The first rule a step body breaks, if any. `earlier` are the bodies of the beam's earlier
/// steps (as [`step_body`] gives them). `cfg.enabled` is not consulted: callers decide.
pub fn check_step(body: &str, earlier: &[&str], cfg: &FilterConfig) -> Option<Reject> {
    let body = step_body(body);
    if body.is_empty() {
        return Some(Reject::Empty);
    }
    if !enough_text(body, cfg.min_text_ratio) {
        return Some(Reject::NonText);
    }
    if repeated_line(body, cfg.max_line_repeats) {
        return Some(Reject::RepeatedLine);
    }
    if repeated_template(body, cfg.max_template_repeats) {
        return Some(Reject::RepeatedLine);
    }
    if looping_tail(body, cfg) {
        return Some(Reject::Loop);
    }
    if cfg.reject_repeated_step {
        let norm = normalize_ws(body);
        if earlier.iter().any(|e| normalize_ws(step_body(e)) == norm) {
            return Some(Reject::RepeatsEarlierStep);
        }
        if cfg.near_repeat < 1.0 {
            let words = word_set(body);
            if body.split_whitespace().count() >= 8
                && earlier
                    .iter()
                    .any(|e| jaccard(&words, &word_set(step_body(e))) >= cfg.near_repeat)
            {
                return Some(Reject::RepeatsEarlierStep);
            }
        }
    }
    if cfg.reject_unfinished_math && unfinished_math(body) {
        return Some(Reject::UnfinishedMath);
    }
    if cfg.check_arithmetic && crate::arithmetic::false_equality(body).is_some() {
        return Some(Reject::WrongArithmetic);
    }
    None
}

/// Lower-cased words with punctuation trimmed (numbers kept: steps that differ in their
/// numbers are different calculations).
fn word_set(body: &str) -> std::collections::HashSet<String> {
    body.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

fn jaccard(a: &std::collections::HashSet<String>, b: &std::collections::HashSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

fn enough_text(body: &str, min_ratio: f64) -> bool {
    let (mut all, mut text) = (0usize, 0usize);
    for c in body.chars().filter(|c| !c.is_whitespace()) {
        all += 1;
        if c.is_alphanumeric() {
            text += 1;
        }
    }
    all > 0 && text as f64 >= min_ratio * all as f64
}

fn repeated_line(body: &str, max: usize) -> bool {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for line in body.lines() {
        let l = normalize_ws(line);
        if l.is_empty() || math_delimiter(&l) {
            continue;
        }
        let n = counts.entry(l).or_default();
        *n += 1;
        if *n >= max {
            return true;
        }
    }
    false
}

/// A line that only opens or closes a math block (`\[`, `\]`, `$$`, `\(`, `\)`,
/// `\begin{aligned}`, `\end{aligned}`, ...): a step with three display formulas has three of
/// each, which is layout, not a loop.
fn math_delimiter(line: &str) -> bool {
    matches!(line, "\\[" | "\\]" | "$$" | "\\(" | "\\)")
        || ["\\begin{", "\\end{"].iter().any(|p| {
            line.strip_prefix(p)
                .and_then(|r| r.strip_suffix('}'))
                .is_some_and(|env| {
                    !env.is_empty() && env.chars().all(|c| c.is_ascii_alphabetic() || c == '*')
                })
        })
}

/// Lines with every digit run replaced by `0`: the most frequent one occurs `max` times or
/// more and is at least half of the non-blank lines.
fn repeated_template(body: &str, max: usize) -> bool {
    if max == 0 {
        return false;
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut lines = 0usize;
    for line in body.lines() {
        let l = normalize_ws(line);
        if l.is_empty() || math_delimiter(&l) {
            continue;
        }
        lines += 1;
        let mut t = String::with_capacity(l.len());
        let mut in_digits = false;
        for c in l.chars() {
            if c.is_ascii_digit() {
                if !in_digits {
                    t.push('0');
                }
                in_digits = true;
            } else {
                t.push(c);
                in_digits = false;
            }
        }
        *counts.entry(t).or_default() += 1;
    }
    counts.values().any(|&n| n >= max && 2 * n >= lines)
}

/// The longest suffix of `words` that is one n-gram (n ≤ max) repeated at least `min_repeats`
/// times covers at least `tail` of the words.
fn looping_tail(body: &str, cfg: &FilterConfig) -> bool {
    let words: Vec<&str> = body.split_whitespace().collect();
    let len = words.len();
    for n in 1..=cfg.loop_max_ngram.min(len / 2) {
        // Extend the periodic suffix backwards: words[i] == words[i + n].
        let mut start = len - n;
        while start > 0 && words[start - 1] == words[start - 1 + n] {
            start -= 1;
        }
        let run = len - start;
        if run >= n * cfg.loop_min_repeats && run as f64 >= cfg.loop_tail * len as f64 {
            return true;
        }
    }
    false
}

/// Splits the reasoning of a written trace into step texts: at `### Step` headers for the
/// prompt-guided unit, at blank lines otherwise. Text before the first header is a step too.
pub fn split_steps(reasoning: &str, prompt_guided: bool) -> Vec<String> {
    let mut steps: Vec<String> = Vec::new();
    if prompt_guided {
        let mut cur = String::new();
        for line in reasoning.split_inclusive('\n') {
            if line.trim_start().starts_with("### Step") && !cur.trim().is_empty() {
                steps.push(std::mem::take(&mut cur));
            }
            cur.push_str(line);
        }
        if !cur.trim().is_empty() {
            steps.push(cur);
        }
    } else {
        steps = reasoning
            .split("\n\n")
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
            .collect();
    }
    steps
}

/// Where step `i` of `reasoning` starts (a byte offset), for `### Step` steps: the steps of
/// [`split_steps`] are consecutive pieces of the text, so it is the length of the ones before.
pub fn step_offset(reasoning: &str, i: usize) -> usize {
    split_steps(reasoning, true)[..i]
        .iter()
        .map(String::len)
        .sum()
}

/// The degenerate steps of a written reasoning text: (0-based step, reason) for every step
/// that breaks a rule.
pub fn degenerate_steps(
    reasoning: &str,
    prompt_guided: bool,
    cfg: &FilterConfig,
) -> Vec<(usize, Reject)> {
    let steps = split_steps(reasoning, prompt_guided);
    let mut out = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let earlier: Vec<&str> = steps[..i].iter().map(String::as_str).collect();
        if let Some(r) = check_step(s, &earlier, cfg) {
            out.push((i, r));
        }
    }
    out
}

/// Whether a step states the final answer: "the final answer is" (any case) or a `\boxed{`.
/// Returns the byte offset just after the line that states it.
pub fn states_answer(body: &str) -> Option<usize> {
    let lower = body.to_ascii_lowercase();
    let at = ["final answer is", "\\boxed{"]
        .iter()
        .filter_map(|pat| lower.find(pat))
        .min()?;
    Some(body[at..].find('\n').map_or(body.len(), |e| at + e))
}

/// Whether a step body adds something a reader can check: it states the final answer
/// ([`states_answer`]), contains a formula (`=`, `+`, `*`, `/`, `^`, `<`, `>`, `×`, `÷`, `√`,
/// `≤`, `≥`, `≠` or a LaTeX command such as `\frac`), or contains a number that neither
/// `question` nor the `earlier` steps contain. List markers (`1.` or `2)` at the start of a
/// line) are not numbers here. "Find the total distance covered by the fog bank." and "The
/// juggler can juggle 16 balls." (16 from the question) make no progress; "Half of them, 8,
/// are golf balls." and "16 / 2 = 8" do.
pub fn makes_progress(body: &str, question: &str, earlier: &[&str]) -> bool {
    let body = step_body(body);
    if states_answer(body).is_some() {
        return true;
    }
    if body.contains(['=', '+', '/', '^', '<', '>', '×', '÷', '√', '≤', '≥', '≠'])
        || single_star(body)
        || has_latex_command(body)
    {
        return true;
    }
    let new = numbers(body);
    if new.is_empty() {
        return false;
    }
    let mut known = numbers(question);
    for e in earlier {
        known.extend(numbers(step_body(e)));
    }
    new.iter().any(|n| !known.contains(n))
}

/// A `*` that is not part of markdown emphasis (`**bold**`, `*italic*` at a word's edge):
/// one with a space or a digit on each side, as in `3 * 4` or `3*4`.
fn single_star(s: &str) -> bool {
    let c: Vec<char> = s.chars().collect();
    (1..c.len().saturating_sub(1)).any(|i| {
        let operand = |x: char| x == ' ' || x.is_ascii_digit() || x == ')';
        c[i] == '*' && operand(c[i - 1]) && (operand(c[i + 1]) || c[i + 1] == '(')
    })
}

/// A backslash followed by a letter (`\frac`, `\times`, `\sqrt`, ...).
fn has_latex_command(s: &str) -> bool {
    s.as_bytes()
        .windows(2)
        .any(|w| w[0] == b'\\' && w[1].is_ascii_alphabetic())
}

/// The numbers of a text in a normal form: thousands separators dropped (`1,000` → `1000`),
/// trailing decimal zeros dropped (`8.50` → `8.5`, `8.0` → `8`); list markers (a number
/// followed by `.` or `)` at the start of a line, after any markdown `#`, `*`, `-`, `>`) left out.
fn numbers(s: &str) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    for line in s.lines() {
        let chars: Vec<char> = line.chars().collect();
        // A list marker may follow markdown (`#### 5. Calculate ...`, `- 2) ...`, `**3.**`).
        let first = chars
            .iter()
            .position(|c| !c.is_whitespace() && !matches!(c, '#' | '*' | '-' | '>'));
        let mut i = 0;
        while i < chars.len() {
            if !chars[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            let start = i;
            let mut n = String::new();
            while i < chars.len() {
                let c = chars[i];
                let next_digit = chars.get(i + 1).is_some_and(char::is_ascii_digit);
                if c.is_ascii_digit() {
                    n.push(c);
                } else if c == ',' && next_digit && !n.contains('.') {
                    // thousands separator
                } else if c == '.' && next_digit && !n.contains('.') {
                    n.push('.');
                } else {
                    break;
                }
                i += 1;
            }
            let marker = Some(start) == first
                && matches!(chars.get(i), Some('.' | ')'))
                && !chars.get(i + 1).is_some_and(char::is_ascii_digit);
            if marker {
                continue;
            }
            if n.contains('.') {
                n = n.trim_end_matches('0').trim_end_matches('.').to_string();
            }
            out.insert(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str) -> Option<Reject> {
        check_step(body, &[], &FilterConfig::default())
    }

    #[test]
    fn empty_after_header() {
        assert_eq!(check("### Step 3.   \n"), Some(Reject::Empty));
        assert_eq!(check("### Step 3.\n</think>"), Some(Reject::Empty));
        assert_eq!(check("### Step 3. 2 + 2 = 4"), None);
    }

    #[test]
    fn display_formula_delimiters_are_not_repeated_lines() {
        // Qwen2.5-Coder-1.5B alone on a CHAMP problem (champ-P_Combinatorics_11): four display
        // formulas, each `\[` and `\]` on a line of its own.
        let step = "### Step 4. Simplify the Expression\n\
            Substitute the expression for \\( \\binom{n}{2} \\) into the equation:\n\n\
            \\[\n\\text{Number of diagonals} = \\frac{n(n-1)}{2} - n\n\\]\n\n\
            To combine these terms, we need a common denominator. The common denominator is 2:\n\n\
            \\[\n\\text{Number of diagonals} = \\frac{n(n-1) - 2n}{2}\n\\]\n\n\
            Simplify the numerator:\n\n\
            \\[\nn(n-1) - 2n = n^2 - n - 2n = n^2 - 3n\n\\]\n\n\
            So, the number of diagonals is:\n\n\
            \\[\n\\text{Number of diagonals} = \\frac{n^2 - 3n}{2}\n\\]\n";
        assert_eq!(check(step), None);
        let aligned: String = (1..=3)
            .map(|i| format!("\\begin{{aligned}}\nx_{i} &= {i} + {i}\n\\end{{aligned}}\n"))
            .collect();
        assert_eq!(check(&format!("### Step 2.\n{aligned}")), None);
        // A repeated line with text in it is still a loop, delimiters or not.
        let looped = "$$\nthe count is n + 2\n$$\n".repeat(3);
        assert_eq!(
            check(&format!("### Step 2.\n{looped}")),
            Some(Reject::RepeatedLine)
        );
    }

    #[test]
    fn markup_and_replacement_characters_are_non_text() {
        let hashes = format!("### Step 4.\n{}", "####\n".repeat(23));
        assert_eq!(check(&hashes), Some(Reject::NonText));
        assert_eq!(
            check("### Step 2. \u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD} a"),
            Some(Reject::NonText)
        );
        assert_eq!(check("| --- | --- |\n| * | * |"), Some(Reject::NonText));
        // Formulas are text: digits and letters dominate.
        assert_eq!(check("$16 \\times 2 = 32$, so Tom has 32 apples."), None);
        assert_eq!(check("(3 + 4) * 6 = 42"), None);
    }

    #[test]
    fn a_line_three_times_is_rejected_twice_is_not() {
        assert_eq!(
            check("x = 2\ny = 3\nx = 2\nx   = 2"),
            Some(Reject::RepeatedLine)
        );
        assert_eq!(check("x = 2\ny = 3\nx = 2\n"), None);
        let cfg = FilterConfig {
            max_line_repeats: 2,
            ..FilterConfig::default()
        };
        assert_eq!(
            check_step("x = 2\ny = 3\nx = 2", &[], &cfg),
            Some(Reject::RepeatedLine)
        );
    }

    #[test]
    fn numbered_copies_of_a_line_are_rejected() {
        // From a real demo-pool trace (SmolLM2-135M, GSM8K).
        let t = "### Step 1. Solve the equation for X:\n#### 1. Solve equation for X\n#### 2. Solve equation for X\n#### 3. Solve equation for X\n#### 4. Solve equation for X\n#### 5. Add equation for X";
        assert_eq!(check(t), Some(Reject::RepeatedLine));
        // Three calculations of one form are a step, not junk; so are four among many lines.
        assert_eq!(check("2 * 5 = 10\n3 * 5 = 15\n4 * 5 = 20"), None);
        let mixed = "Day 1: 5 apples\nDay 2: 7 apples\nDay 3: 9 apples\nDay 4: 11 apples\nIn all 5 + 7 + 9 + 11 = 32.\nHe eats 2 a day.\nSo 32 / 2 = 16 days.\nHe buys 3 more.\nThat makes 19.";
        assert_eq!(check(mixed), None);
        let off = FilterConfig {
            max_template_repeats: 0,
            ..FilterConfig::default()
        };
        assert_eq!(check_step(t, &[], &off), None);
    }

    #[test]
    fn looping_tail_is_rejected() {
        // The gsm8k-269 trace: "16 = 16 x 2 / 16 = 8 x 2 / 8 = 8 / 2 / 8 = 4 / 4 = 1" is
        // arithmetic nonsense but no loop; a real loop repeats the same words.
        assert_eq!(
            check(
                "We know that 8 / 2 = 4 and 4 / 2 = 2 and 2 / 2 = 2 / 2 = 2 / 2 = 2 / 2 = 2 / 2 = 2"
            ),
            Some(Reject::Loop)
        );
        assert_eq!(check("so so so so so so so so so so"), Some(Reject::Loop));
        // Two copies are not a loop; a loop in a short part of a long step is not either.
        assert_eq!(check("He pays 5 + 5 = 10 dollars."), None);
        let long = format!(
            "{} ha ha ha",
            "Each box holds 12 eggs, and there are 4 boxes, so 48 eggs in all. ".repeat(2)
        );
        assert_eq!(check(&long), None);
        assert_eq!(check("1 + 1 + 1 + 1 = 4"), None);
    }

    #[test]
    fn repeating_an_earlier_step_is_rejected() {
        let earlier = [
            "### Step 1. Tom has 3 apples.\n\n",
            "### Step 2. He buys 4 more.\n\n",
        ];
        let cfg = FilterConfig::default();
        assert_eq!(
            check_step("### Step 3.  He buys 4\nmore. ", &earlier, &cfg),
            Some(Reject::RepeatsEarlierStep)
        );
        assert_eq!(
            check_step("### Step 3. Now he has 7.", &earlier, &cfg),
            None
        );
        let off = FilterConfig {
            reject_repeated_step: false,
            ..cfg
        };
        assert_eq!(
            check_step("### Step 3. He buys 4 more.", &earlier, &off),
            None
        );
    }

    #[test]
    fn a_near_copy_of_an_earlier_step_is_rejected() {
        // From a real demo-pool trace (gsm8k-473): step 2 copies step 1 up to a colon and the
        // last numbered line.
        let s1 = "### Step 1. Solve the equation for X:\n#### 1. Solve equation for X\n#### 2. Solve equation for X\n#### 3. Add equation for X\n\n";
        let s2 = "### Step 2. Solve the equation for X\n#### 1. Solve equation for X\n#### 2. Add equation for X\n#### 3. Add equation for X";
        let cfg = FilterConfig::default();
        assert_eq!(
            check_step(s2, &[s1], &cfg),
            Some(Reject::RepeatsEarlierStep)
        );
        // A step that reuses the numbers and some words of an earlier one is not a copy, nor
        // is the same sentence with other numbers (another calculation; real trace, gsm8k-1264).
        let c = "### Step 2. 3 times that amount in the next 30 seconds.\n\\[ 3 \\times 20 = 60 \\text{ pop} \\]\n\n";
        let d = "### Step 3. 4 times that amount in the next 30 seconds.\n\\[ 4 \\times 30 = 120 \\text{ pop} \\]";
        assert_eq!(check_step(d, &[c], &cfg), None);
        let a = "### Step 1. Each box holds 12 eggs and there are 4 boxes.\n\n";
        let b = "### Step 2. So the 4 boxes hold 12 * 4 = 48 eggs in all.";
        assert_eq!(check_step(b, &[a], &cfg), None);
        let exact_only = FilterConfig {
            near_repeat: 1.0,
            ..cfg
        };
        assert_eq!(check_step(s2, &[s1], &exact_only), None);
    }

    #[test]
    fn bad_thresholds_name_their_key() {
        let e = FilterConfig {
            loop_tail: 0.0,
            ..FilterConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("filter.loop_tail"), "{e}");
        let e = FilterConfig {
            max_line_repeats: 1,
            ..FilterConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("filter.max_line_repeats"), "{e}");
    }

    #[test]
    fn written_traces_are_split_and_checked() {
        let r = "### Step 1. a = 2\n\n### Step 2. b = 3\n\n### Step 3. b = 3\n\n### Step 4.\n####\n####\n";
        assert_eq!(split_steps(r, true).len(), 4);
        assert_eq!(
            degenerate_steps(r, true, &FilterConfig::default()),
            vec![(2, Reject::RepeatsEarlierStep), (3, Reject::NonText)]
        );
        assert_eq!(split_steps("a\n\nb\n\n\n\nc", false), vec!["a", "b", "c"]);
    }

    #[test]
    fn answer_statements_are_found() {
        let b = " 3 + 4 = 7.\nThe final answer is 7.\nMore text";
        assert_eq!(
            &b[..states_answer(b).unwrap()],
            " 3 + 4 = 7.\nThe final answer is 7."
        );
        assert_eq!(states_answer("so \\boxed{7}"), Some(12));
        assert_eq!(states_answer("3 + 4 = 7"), None);
    }

    #[test]
    fn a_step_ending_inside_a_formula_is_rejected() {
        // gsm8k-740: SmolLM2's step cut by the 80-token step cap inside a formula.
        let cut = "### Step 3. We add 10 to the result of the previous step:\n\\[ 10 \\times";
        assert_eq!(check(cut), Some(Reject::UnfinishedMath));
        assert_eq!(
            check("### Step 3. So $$x = 2$$ and $$x ="),
            Some(Reject::UnfinishedMath)
        );
        assert_eq!(
            check("### Step 3. Inline \\(5 \\times (2 +"),
            Some(Reject::UnfinishedMath)
        );
        assert_eq!(
            check("### Step 3. \\[ \\frac{3}{"),
            Some(Reject::UnfinishedMath)
        );
        // Closed, or open but not ending on an operator: kept.
        assert_eq!(
            check("### Step 2. \\[ 5 \\times 2 = 10 \\]\nSo 10 like music."),
            None
        );
        assert_eq!(check("### Step 2. \\[ \\frac{42}{3} = 14 \\"), None);
        let off = FilterConfig {
            reject_unfinished_math: false,
            ..FilterConfig::default()
        };
        assert_eq!(check_step(cut, &[], &off), None);
    }

    #[test]
    fn false_arithmetic_is_rejected_unless_turned_off() {
        // gsm8k-269 (README, "Wrong arithmetic"): SmolLM2's step won the beam with this.
        let step = "### Step 2. 16 = 16 * 2 = 32";
        assert_eq!(check(step), Some(Reject::WrongArithmetic));
        assert_eq!(check("### Step 2. 16 / 2 = 8 golf balls"), None);
        let off = FilterConfig {
            check_arithmetic: false,
            ..FilterConfig::default()
        };
        assert_eq!(check_step(step, &[], &off), None);
        assert_eq!(Reject::WrongArithmetic.as_str(), "wrong-arithmetic");
    }

    #[test]
    fn progress_is_a_new_number_a_formula_or_the_answer() {
        // Real demo-pool candidates (GSM8K; "fog bank": gsm8k-103, "basketball": gsm8k-740).
        let q = "The juggler can juggle 16 balls. Half of the balls are golf balls, and half of \
                 the golf balls are blue. How many blue golf balls are there?";
        assert!(!makes_progress(
            "### Step 1. The juggler can juggle 16 balls.",
            q,
            &[]
        ));
        assert!(!makes_progress(
            "### Step 1. Find the total distance covered by the fog bank.",
            q,
            &[]
        ));
        assert!(!makes_progress("**Identify** the *golf balls*.", q, &[]));
        assert!(!makes_progress(
            "1. Count the balls.\n2) Halve them.",
            q,
            &[]
        ));
        // Numbered plan lines under markdown (a real SmolLM2-135M step, GSM8K gsm8k-473).
        assert!(!makes_progress(
            "### Step 1. Determine the total length of the shark.\n#### 1. Determine the \
             total length of the shark.\n#### 2. Determine the combined length of the remoras.",
            "Remoras of 18 inches each attach to a 10 foot shark.",
            &[]
        ));
        assert!(!makes_progress(
            "- 3) Find the blue ones.\n**4.** Count them.",
            q,
            &[]
        ));
        assert!(makes_progress("Half of them, 8, are golf balls.", q, &[]));
        assert!(makes_progress("16 / 2 is half of the balls.", q, &[]));
        assert!(makes_progress("The golf balls are 16*0.5.", q, &[]));
        assert!(makes_progress("$\\frac{1}{2}$ of the balls.", q, &[]));
        assert!(makes_progress("The final answer is 4.", q, &[]));
        assert!(makes_progress("### Step 3. \\boxed{4}", q, &[]));
        // A number computed in an earlier step is not new; restating it is no progress.
        let earlier = ["### Step 1. Half of them, 8, are golf balls."];
        assert!(!makes_progress("So there are 8 golf balls.", q, &earlier));
        assert!(makes_progress(
            "Half of the 8 golf balls are blue: 4.",
            q,
            &earlier
        ));
        // Number forms: separators and trailing zeros do not make a number new.
        let q2 = "A car costs $12,000 and a bike $150.50.";
        assert!(!makes_progress("The car costs 12000 dollars.", q2, &[]));
        assert!(!makes_progress("The bike costs $150.5.", q2, &[]));
        assert!(makes_progress(
            "Together they cost 12150.5 dollars.",
            q2,
            &[]
        ));
    }

    #[test]
    fn numbers_are_normalised() {
        let n = numbers("1,000 and 8.50 and 8.0 and 3.\n2. item 7 and 0.25");
        let mut v: Vec<_> = n.into_iter().collect();
        v.sort();
        assert_eq!(v, ["0.25", "1000", "3", "7", "8", "8.5"]);
    }
}
