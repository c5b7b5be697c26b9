//! `cord bench kernels` through the real binary on the CPU: every op's reference against naive
//! code passes, and the speed table compares each op with plain candle ops that give the same
//! result (the same command runs on a GPU in scripts/gpu-check.sh).

use std::process::Command;

use serde_json::Value;

#[test]
fn kernels_pass_on_the_cpu_and_report_speed() {
    let o = Command::new(env!("CARGO_BIN_EXE_cord"))
        .args(["bench", "kernels", "--device", "cpu", "--json", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["bench"], "kernels");
    let cases = v["results"]["cases"].as_array().unwrap();
    assert!(cases.len() > 100, "{} cases", cases.len());
    for op in ["token_logprob", "paged_attention", "kv_write", "block_copy"] {
        let of_op: Vec<&Value> = cases.iter().filter(|c| c["op"] == op).collect();
        assert!(!of_op.is_empty(), "no {op} case");
        assert!(of_op.iter().all(|c| c["ok"] == true), "{op}: {of_op:?}");
    }
    let timings = v["results"]["timings"].as_array().unwrap();
    assert_eq!(timings.len(), 5);
    for t in timings {
        assert!(t["ours_us"].as_f64().unwrap() > 0.0, "{t}");
        assert!(t["baseline_us"].as_f64().unwrap() > 0.0, "{t}");
        // Each op and its plain-candle baseline compute the same values.
        assert!(t["max_abs_diff"].as_f64().unwrap() < 1e-3, "{t}");
    }
    // The table goes to stderr when the JSON goes to stdout.
    assert!(
        err.contains("paged_attention") && err.contains("speedup"),
        "{err}"
    );
}
