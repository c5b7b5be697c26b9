//! `cord verify GOLD PREDICTION`: exit 0 when equal, 1 when not, both normal forms printed.

mod common;

use common::cord;

fn verify(args: &[&str]) -> (i32, String) {
    let o = cord().arg("verify").args(args).output().unwrap();
    (
        o.status.code().unwrap(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn verify_prints_normal_forms_and_exits_by_the_verdict() {
    let (code, out) = verify(&["1/2", "0.5"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "equal\ngold:       1/2\nprediction: 1/2\n");

    let (code, out) = verify(&["[0,1)", "[0,1]"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("not equal\n"), "{out}");
    assert!(
        out.contains("gold:       [0, 1)") && out.contains("prediction: [0, 1]"),
        "{out}"
    );

    let (code, out) = verify(&["2\\sqrt{2}", "\\sqrt{8}"]);
    assert_eq!(code, 0, "{out}");

    let (code, out) = verify(&["--extract", "42", "so the final answer is $\\boxed{42}$."]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify(&["--extract", "42", "no number here"]);
    assert_eq!(code, 1, "{out}");
}
