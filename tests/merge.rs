//! `cord merge` through the binary: shard files with a torn last line, missing ids against
//! `--input`, `--allow-missing`, input order, and the refusals (other runs, existing output).

use std::path::Path;
use std::process::Command;

fn cord(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cord"))
        .args(args)
        .output()
        .expect("run cord")
}

fn rec(id: &str, pool: &str) -> String {
    serde_json::json!({"id": id, "correct": id.ends_with('1'), "config": {"pool": pool},
                       "steps": [], "stats": {"seconds": 1.0}})
    .to_string()
}

fn write(path: &Path, lines: &[String], tail: &str) {
    let mut s: String = lines.iter().map(|l| format!("{l}\n")).collect();
    s.push_str(tail);
    std::fs::write(path, s).unwrap();
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn merge_cli() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let input = dir.join("problems.jsonl");
    let ids = ["q1", "q2", "q3", "q4", "q5"];
    let problems: String = ids
        .iter()
        .map(|id| format!("{{\"id\":\"{id}\",\"question\":\"?\",\"answer\":\"1\"}}\n"))
        .collect();
    std::fs::write(&input, problems).unwrap();
    let (s0, s1, out) = (
        dir.join("s0.jsonl"),
        dir.join("s1.jsonl"),
        dir.join("m.jsonl"),
    );
    let torn = rec("q4", "fp");
    write(&s0, &[rec("q3", "fp"), rec("q1", "fp")], &torn[..10]);
    write(&s1, &[rec("q2", "fp")], "");

    // q4 (torn) and q5 are missing: an error naming them, nothing written.
    let o = cord(&[
        "merge",
        p(&s0),
        p(&s1),
        "--input",
        p(&input),
        "--output",
        p(&out),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("torn last line: ") && err.contains("s0.jsonl:3"),
        "{err}"
    );
    assert!(
        err.contains("2 of 5 problems") && err.contains("q4, q5"),
        "{err}"
    );
    assert!(
        err.contains("--allow-missing") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!out.exists());

    let o = cord(&[
        "merge",
        p(&s0),
        p(&s1),
        "--input",
        p(&input),
        "--output",
        p(&out),
        "--allow-missing",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let merged = std::fs::read_to_string(&out).unwrap();
    let want: String = ["q1", "q2", "q3"]
        .iter()
        .map(|id| rec(id, "fp") + "\n")
        .collect();
    assert_eq!(merged, want, "input order, records byte for byte");
    assert!(String::from_utf8_lossy(&o.stdout).contains("merged 3 records"));

    // The output exists now.
    let o = cord(&["merge", p(&s1), "--output", p(&out)]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--overwrite"));

    // A shard of another run.
    let other = dir.join("other.jsonl");
    write(&other, &[rec("q5", "fp-other")], "");
    let o = cord(&[
        "merge",
        p(&s1),
        p(&other),
        "--output",
        p(&out),
        "--overwrite",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("another run"), "{err}");

    // Complete set (q4 rewritten by a resumed shard), no --input: first-appearance order.
    write(
        &s0,
        &[rec("q3", "fp"), rec("q1", "fp"), rec("q4", "fp")],
        "",
    );
    write(&other, &[rec("q5", "fp"), rec("q2", "fp")], "");
    let o = cord(&[
        "merge",
        p(&s0),
        p(&s1),
        p(&other),
        "--input",
        p(&input),
        "--output",
        p(&out),
        "--overwrite",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 identical duplicate"));
    let merged = std::fs::read_to_string(&out).unwrap();
    let want: String = ids.iter().map(|id| rec(id, "fp") + "\n").collect();
    assert_eq!(merged, want);
}
