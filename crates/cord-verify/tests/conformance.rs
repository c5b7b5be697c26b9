//! The conformance table: (gold, prediction, expected) rows covering every rule of the
//! verifier, including the usual traps.

use cord_verify::{answers_match, extract_answer, verify};

const Y: bool = true;
const N: bool = false;

#[rustfmt::skip]
const TABLE: &[(&str, &str, bool)] = &[
    // Integers and decimals.
    ("42", "42", Y),
    ("42", "43", N),
    ("42", " 42 ", Y),
    ("42", "42.", Y),
    ("42", "42.0", Y),
    ("3.5", "3.50", Y),
    ("3.5", "35", N),
    ("-4", "-4", Y),
    ("-4", "4", N),
    ("0", "-0", Y),
    ("0.5", ".5", Y),
    ("0.25", ".25", Y),
    ("1000000", "1e6", N),
    ("7", "007", Y),
    // Fractions, exact rationals.
    ("1/2", "0.5", Y),
    ("0.5", "\\frac{1}{2}", Y),
    ("\\frac12", "0.5", Y),
    ("\\frac12", "\\frac{1}{2}", Y),
    ("\\frac{1}{2}", "\\dfrac{1}{2}", Y),
    ("\\tfrac{3}{4}", "0.75", Y),
    ("2/4", "1/2", Y),
    ("-3/4", "-0.75", Y),
    ("-\\frac{3}{4}", "\\frac{-3}{4}", Y),
    ("1/3", "0.333", N),
    ("1/3", "0.3333333333", N),
    ("1/3", "\\frac{2}{6}", Y),
    ("5/14", "\\frac{5}{14}", Y),
    ("1/0", "0", N),
    ("\\frac{1}{2}", "\\frac{1}{3}", N),
    ("\\frac{10}{4}", "2.5", Y),
    ("\\frac{1}{2}", "1/2.", Y),
    // Mixed numbers.
    ("5/2", "2 1/2", Y),
    ("2.5", "2\\frac{1}{2}", Y),
    ("-5/2", "-2 1/2", Y),
    ("7/2", "2 1/2", N),
    ("1", "2\\frac{1}{2}", N),
    // Thousands separators.
    ("3000", "3,000", Y),
    ("3000", "3{,}000", Y),
    ("3000", "3\\,000", Y),
    ("1234567", "1,234,567", Y),
    ("1234567.5", "1,234,567.5", Y),
    ("12", "1,2", N),
    ("1000", "1,00", N),
    // Percent: equal to the bare number and to the fraction; two percentages as written.
    ("10", "10\\%", Y),
    ("0.1", "10\\%", Y),
    ("10\\%", "0.1", Y),
    ("10%", "10 percent", Y),
    ("50", "50%", Y),
    ("10\\%", "0.1\\%", N),
    ("10\\%", "20", N),
    ("35.7\\%", "0.357", Y),
    // Units and text macros.
    ("140", "140 minutes", Y),
    ("5", "5\\text{ cm}", Y),
    ("5", "5 \\text{cm}^2", Y),
    ("12", "12 square feet", Y),
    ("18", "\\$18", Y),
    ("18", "$18.00", Y),
    ("1200", "\\$1,200", Y),
    ("5", "5 cm", Y),
    ("5", "6 cm", N),
    ("2", "2 inequalities", Y),
    ("98", "98 values", Y),
    // Degrees.
    ("90", "90^\\circ", Y),
    ("90", "90^{\\circ}", Y),
    ("90", "90°", Y),
    ("90", "90 degrees", Y),
    ("45", "90^\\circ", N),
    // \left / \right and spacing.
    ("(1,2)", "\\left(1,2\\right)", Y),
    ("(1,2)", "\\left( 1, 2 \\right)", Y),
    ("\\frac{1}{2}", "\\left(\\frac{1}{2}\\right)", Y),
    ("3", "\\!3\\,", Y),
    // Variable prefixes and equations.
    ("5", "x = 5", Y),
    ("5", "x=5", Y),
    ("5", "y = 5", Y),
    ("5", "x = 6", N),
    ("7", "3 + 4 = 7", Y),
    ("2", "a_1 = 2", Y),
    ("(6, 5)", "x=6, y=5", Y),
    ("x=6, y=5", "y=5, x=6", Y),
    ("x=6, y=5", "x=5, y=6", N),
    ("(0, 0)", "x=y=0", Y),
    ("(1, 2)", "(x, y) = (1, 2)", Y),
    ("\\{-1, 1\\}", "x = \\pm 1", Y),
    // Boxed and delimiters.
    ("7", "\\boxed{7}", Y),
    ("7", "$\\boxed{7}$", Y),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}}", Y),
    ("7", "$7$", Y),
    ("7", "\\(7\\)", Y),
    ("7", "\\[7\\]", Y),
    ("7", "**7**", Y),
    // Roots, pi, powers: evaluated at 1e-9 relative.
    ("2\\sqrt{2}", "\\sqrt{8}", Y),
    ("2\\sqrt{2}", "\\sqrt{2}", N),
    ("\\sqrt{2}", "2^{1/2}", Y),
    ("\\sqrt{3}/3", "1/\\sqrt{3}", Y),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", Y),
    ("\\sqrt{12}", "2\\sqrt3", Y),
    ("\\sqrt[3]{8}", "2", Y),
    ("3\\sqrt{2}", "4.2426", N),
    ("3\\sqrt{2}", "4.242640687", Y),
    ("3\\sqrt{2}", "4.242640687119285", Y),
    ("2\\pi", "\\pi \\cdot 2", Y),
    ("2\\pi", "6.283185307179586", Y),
    ("2\\pi", "6.28", N),
    ("\\pi/2", "\\frac{\\pi}{2}", Y),
    ("2^{10}", "1024", Y),
    ("2^10", "1024", Y),
    ("2^{997}", "2^997", Y),
    ("2^{997}", "2^{996}", N),
    ("10^{-3}", "0.001", Y),
    ("4^{1/2}", "2", Y),
    ("(-8)^{1/3}", "-2", Y),
    ("3 \\times 4", "12", Y),
    ("3 \\cdot 4", "12", Y),
    ("12 \\div 4", "3", Y),
    ("5!", "120", Y),
    ("\\binom{10}{5}", "252", Y),
    ("C(10, 5)", "252", Y),
    ("\\log_2 8", "3", Y),
    ("\\ln(1)", "0", Y),
    ("1+\\sqrt{2}", "\\sqrt{2}+1", Y),
    ("1-\\sqrt{2}", "\\sqrt{2}-1", N),
    // Expressions with variables: same variables, equal at sample points.
    ("n(n+1)/2", "\\frac{n^2+n}{2}", Y),
    ("n(n+1)/2", "\\frac{n^2-n}{2}", N),
    ("2^(n-1)", "2^{n-1}", Y),
    ("2^(n-1)", "\\frac{2^n}{2}", Y),
    ("2^(n-1)", "2^n", N),
    ("(n+1)^(n-1)", "(n+1)^{n-1}", Y),
    ("n!/(2n)", "\\frac{(n-1)!}{2}", Y),
    ("(2n)!/(2^n*n!)", "\\frac{(2n)!}{2^n n!}", Y),
    ("C(n, 4)", "n(n-1)(n-2)(n-3)/4!", Y),
    ("C(n, 4)", "\\binom{n}{4}", Y),
    ("(n(n+1)/2)^2", "\\frac{n^2(n+1)^2}{4}", Y),
    ("-2x+2", "2-2x", Y),
    ("-2x+2", "2-2y", N),
    ("(x^2+x+1)(x^2-x+1)", "x^4+x^2+1", Y),
    ("(x+y+z)(x^2+y^2+z^2-xy-yz-xz)", "x^3+y^3+z^3-3xyz", Y),
    ("(a^3+2b)/(3a)", "\\frac{a^2}{3}+\\frac{2b}{3a}", Y),
    ("\\sqrt(a)", "\\sqrt{a}", Y),
    ("(1+\\sqrt(4a+1))/2", "\\frac{1+\\sqrt{1+4a}}{2}", Y),
    ("1-1/2^(1/n)", "1-2^{-1/n}", Y),
    ("2^floor(n/2)*floor(n/2)!", "2^{\\lfloor n/2 \\rfloor} \\lfloor n/2 \\rfloor!", Y),
    ("x_1 + x_2", "x_2 + x_1", Y),
    // Tuples: ordered.
    ("(1,2)", "(1,2)", Y),
    ("(1,2)", "(2,1)", N),
    ("(1,2)", "(1, 2)", Y),
    ("(1,2,3)", "(1,2)", N),
    ("(\\frac{1}{2}, 3)", "(0.5, 3)", Y),
    ("(1, 2)", "1, 2", Y),
    ("(1, 2)", "2, 1", N),
    // Sets: unordered.
    ("\\{1,2\\}", "\\{2,1\\}", Y),
    ("\\{1,2\\}", "\\{1,3\\}", N),
    ("\\{1,2\\}", "2, 1", Y),
    ("\\{1,2\\}", "(2,1)", N),
    ("\\{3\\}", "3", Y),
    ("1, 2", "2, 1", Y),
    ("1, 4, 9", "9, 4, 1", Y),
    ("1, 4, 9", "1, 4", N),
    ("376, 625", "376 and 625", Y),
    ("1, 19", "1 and 19", Y),
    ("\\{(0, 2), (9, 11)\\}", "(9, 11), (0, 2)", Y),
    ("\\{(0, 2), (9, 11)\\}", "(2, 0), (9, 11)", N),
    ("\\{(x=8, y=2), (x=2, y=8)\\}", "(2, 8), (8, 2)", Y),
    ("\\{-1, 1, -2, 2, -1/2, 1/2\\}", "x=\\pm 1, \\pm 2, \\pm 1/2", Y),
    ("\\{-1, 1\\}", "\\pm 1", Y),
    ("\\{1+\\sqrt{2}, 1-\\sqrt{2}\\}", "1 \\pm \\sqrt{2}", Y),
    ("0, 1", "f(x)=0 or f(x)=1", Y),
    // Intervals: ends matter.
    ("[0,1)", "[0,1)", Y),
    ("[0,1)", "[0,1]", N),
    ("[0,1)", "(0,1)", N),
    ("[-1, 1]", "[-1,1]", Y),
    ("[-1, 1]", "-1 \\le x \\le 1", N),
    ("(0,1)", "(0, 1)", Y),
    ("(-\\infty, 3]", "(-\\infty,3]", Y),
    ("(-\\infty, 3]", "(-\\infty,3)", N),
    ("x \\in [0, 1)", "[0, 1)", Y),
    ("(-\\infty, 0) \\cup (1, \\infty)", "(1, \\infty) \\cup (-\\infty, 0)", Y),
    ("(-\\infty, 0) \\cup (1, \\infty)", "(-\\infty, 0] \\cup (1, \\infty)", N),
    ("[\\frac{1}{2}, 2]", "[0.5, 2]", Y),
    // Text: case-insensitive.
    ("Yes", "yes", Y),
    ("Yes", "YES.", Y),
    ("No", "no", Y),
    ("No", "Yes", N),
    ("Paris", "\\text{Paris}", Y),
    ("paris", "london", N),
    ("No integer solutions", "no integer solutions", Y),
    ("No integer solutions", "No", N),
    ("The limit does not exist", "the limit does not exist.", Y),
    ("Monotonically increasing", "\\text{monotonically increasing}", Y),
    ("(A)", "(A)", Y),
    ("x(x-1)(x-2)...(x-2022)", "x(x-1)(x-2)...(x-2022)", Y),
    // CHAMP answer styles (data/champ.jsonl golds, plain-text math).
    ("x=6, y=5", "(6, 5)", Y),
    ("x=6, y=5", "(5, 6)", N),
    ("a=3, b=-7, c=4", "a = 3, b = -7, c = 4", Y),
    ("a=3, b=-7, c=4", "(3, -7, 4)", Y),
    ("\\{(x=0, y=2), (x=9, y=11)\\}", "(x, y) = (0, 2) and (x, y) = (9, 11)", Y),
    ("\\{(p=3, q=2), (p=5, q=3)\\}", "\\{(5, 3), (3, 2)\\}", Y),
    ("\\{(p=3, q=2), (p=5, q=3)\\}", "\\{(3, 2)\\}", N),
    ("x=y=0", "(0, 0)", Y),
    ("x=y=0", "x = 0, y = 0", Y),
    ("x=±1", "\\pm 1", Y),
    ("x=±1", "1", N),
    ("x=±1, ±2, ±1/2", "\\{\\pm 1, \\pm 2, \\pm \\frac{1}{2}\\}", Y),
    ("a(1±sqrt(2)), a(1±sqrt(5))/2", "a(1+\\sqrt{2}), a(1-\\sqrt{2}), \\frac{a(1+\\sqrt{5})}{2}, \\frac{a(1-\\sqrt{5})}{2}", Y),
    ("f(x)=0 or f(x)=1", "f(x) = 1 or f(x) = 0", Y),
    ("sqrt(a)", "\\sqrt{a}", Y),
    ("1/sqrt(3)", "\\frac{\\sqrt{3}}{3}", Y),
    ("(20*10^15-2)/17", "1176470588235294", Y),
    ("n(n-1)(n-2)(n-3)/4!", "\\binom{n}{4}", Y),
    ("C(n+1, 2m+1)", "\\binom{n+1}{2m+1}", Y),
    ("(4^n+2^n)/2", "2^{2n-1}+2^{n-1}", Y),
    ("n(n+1)*2^(n-2)", "n(n+1)2^{n-2}", Y),
    ("((-1)^(n+1)+n+1)/(n+2)", "\\frac{n+1-(-1)^n}{n+2}", Y),
    ("(x+1)(x-1)(x^2+1)(x^3−x^2+1)(x^2+x+1)", "(x^4-1)(x^3-x^2+1)(x^2+x+1)", Y),
    ("k-2", "k - 2", Y),
    ("2/3", "\\frac{2}{3}", Y),
    ("No integer solutions", "No integer solutions.", Y),
    ("", "1", N),
    ("1", "", N),
];

#[test]
fn conformance_table() {
    let mut failures = Vec::new();
    for (i, (gold, pred, want)) in TABLE.iter().enumerate() {
        let v = verify(gold, pred);
        if v.equal != *want {
            failures.push(format!(
                "row {i}: gold {gold:?} pred {pred:?}: want {want}, got {} (normal forms {:?} / {:?})",
                v.equal, v.gold, v.prediction
            ));
        }
        // Equality is symmetric.
        if verify(pred, gold).equal != v.equal {
            failures.push(format!("row {i}: not symmetric for {gold:?} / {pred:?}"));
        }
    }
    println!(
        "conformance: {} rows, {} failing",
        TABLE.len(),
        failures.len()
    );
    assert!(TABLE.len() >= 150, "the table has {} rows", TABLE.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn extraction_then_verification() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("so \\boxed{204}.", "204", Some("204")),
        (
            "first \\boxed{1} then \\boxed{\\frac{1}{2}}",
            "0.5",
            Some("\\frac{1}{2}"),
        ),
        ("$\\boxed 7$", "7", Some("7")),
        ("\\fbox{12}", "12", Some("12")),
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72", Some("72")),
        ("The final answer is 42.", "42", Some("42")),
        ("The final answer is: $3.50$.\nThanks", "3.5", Some("3.50")),
        ("**The final answer is \\(x = 5\\)**", "5", Some("x = 5")),
        ("Thus the answer is 17", "17", Some("17")),
        ("The final answer is 140 minutes.", "140", Some("140")),
        (
            "The final answer is $1,200 per week.",
            "1200",
            Some("$1,200"),
        ),
        ("I think the answer is: **Paris**.", "paris", Some("Paris")),
        (
            "We get 3 apples and then 1,234 pears, total 1,237.",
            "1237",
            Some("1237"),
        ),
        (
            "So the ratio is $\\frac{2}{3}$.",
            "2/3",
            Some("\\frac{2}{3}"),
        ),
        ("Hence \\(x = \\sqrt{2}\\)", "\\sqrt{2}", Some("\\sqrt{2}")),
        ("We have $x=2$ and then 5 more.", "5", Some("5")),
        ("costs $5 and then $6 in total", "6", Some("6")),
        ("half of it: .5", "0.5", Some(".5")),
        ("temperature fell to -4 degrees", "-4", Some("-4")),
        ("no numbers here", "", None),
    ];
    for (text, gold, want) in cases {
        let got = extract_answer(text);
        assert_eq!(got.as_deref(), *want, "{text:?}");
        if let Some(g) = got {
            assert!(
                answers_match(&g, gold),
                "{text:?}: {g:?} should match {gold:?}"
            );
        }
    }
}

#[test]
fn normal_forms() {
    let cases = [
        ("\\frac12", "1/2"),
        ("0.50", "1/2"),
        ("3,000", "3000"),
        ("2\\sqrt{2}", "2*sqrt(2)"),
        ("10\\%", "10%"),
        ("\\text{Yes}", "yes"),
        ("[0,1)", "[0, 1)"),
        ("\\{2,1\\}", "{2, 1}"),
        ("x = 5", "5"),
        ("\\frac{n(n+1)}{2}", "n*(n+1)/2"),
    ];
    for (s, want) in cases {
        assert_eq!(cord_verify::normalize(s), want, "{s:?}");
    }
}
