//! The verifier never panics, whatever it is given, and equality is symmetric.

use cord_verify::{extract_answer, normalize, verify};
use proptest::prelude::*;

/// Strings biased towards the verifier's syntax.
fn mathy() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "\\frac",
        "\\sqrt",
        "\\boxed{",
        "{",
        "}",
        "(",
        ")",
        "[",
        "]",
        "\\{",
        "\\}",
        "^",
        "_",
        "!",
        ",",
        "=",
        "\\pm",
        "\\cup",
        "\\in ",
        "%",
        "$",
        "\\left(",
        "\\right)",
        "1",
        "2",
        "0",
        ".5",
        "x",
        "n",
        "\\pi",
        "\\infty",
        "-",
        "+",
        "*",
        "/",
        " ",
        "\\text{cm}",
        "C(",
        "9^9^9",
        "\\",
        " and ",
        "yes",
        "####",
        "The final answer is ",
        "\\binom",
        "\\log_",
        "é",
        "∪",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_strings(a in any::<String>(), b in any::<String>()) {
        let v = verify(&a, &b);
        prop_assert_eq!(v.equal, verify(&b, &a).equal);
        let _ = normalize(&a);
        let _ = extract_answer(&a);
    }

    #[test]
    fn math_like_strings(a in mathy(), b in mathy()) {
        let v = verify(&a, &b);
        prop_assert_eq!(v.equal, verify(&b, &a).equal);
        // Reflexive: an answer always matches itself.
        prop_assert_eq!(verify(&a, &a).equal, !a.trim().is_empty());
        let _ = extract_answer(&a);
    }
}

#[test]
fn deep_and_long_inputs() {
    let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
    // Past the depth limit an answer is text: it does not equal 1.
    assert!(!verify(&deep, "1").equal);
    assert!(verify("((((1))))", "1").equal);
    // Past the length limit too.
    let long = "1+".repeat(100_000) + "1";
    assert!(!verify(&long, "100001").equal);
    assert!(verify(&long, &long).equal);
    let frac = "\\frac{".repeat(5_000);
    let _ = verify(&frac, &frac);
    let _ = extract_answer(&"\\boxed{".repeat(50_000));
    let _ = verify("10^{10^{10^{10}}}", "9!!!!!!");
    let _ = verify("\\binom{100000}{50000}", "\\binom{99999}{5}");
}
