//! The job scripts in deploy/: the Kubernetes manifests parse and wire the shard index and
//! count, the Slurm scripts are valid bash and use the array variables, `--shard` and
//! `--resume`, and `cord pool-info --gpus` / `cord synth --shard` validate their input.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn cord(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cord"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run cord")
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_sequence()
        .expect("env list")
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no env {name}"))["value"]
        .as_str()
        .expect("string value")
}

fn sh_syntax_ok(script: &str) {
    let o = Command::new("sh")
        .args(["-n", "-c", script])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "sh -n: {}\n{script}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn indexed_job_wires_the_shards() {
    let job: Value = serde_yaml_ng::from_str(&read("deploy/k8s/cord-indexed-job.yaml")).unwrap();
    assert_eq!(job["kind"].as_str(), Some("Job"));
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
    let n = spec["completions"].as_u64().expect("completions");
    assert_eq!(
        spec["parallelism"].as_u64(),
        Some(n),
        "parallelism == completions"
    );
    let c = &spec["template"]["spec"]["containers"][0];
    assert_eq!(
        env_value(c, "SHARD_COUNT"),
        n.to_string(),
        "SHARD_COUNT == completions"
    );
    let script = c["args"][0].as_str().unwrap();
    sh_syntax_ok(script);
    assert!(
        script.contains(r#"--shard "$JOB_COMPLETION_INDEX/$SHARD_COUNT""#),
        "{script}"
    );
    assert!(
        script.contains("--resume") && script.contains("cord synth"),
        "{script}"
    );
    assert!(
        script.contains("$JOB_COMPLETION_INDEX-of-$SHARD_COUNT.jsonl"),
        "{script}"
    );
    // GPUs: at least what the pool needs (pool-info), requested and limited alike.
    let pool = Path::new(env_value(c, "CORD_POOL")).file_name().unwrap();
    let pool = Path::new("models").join(pool);
    let o = cord(&["pool-info", "--gpus", pool.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let need: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert_eq!(
        need, 3,
        "models/paper.toml places its teachers on cuda:0..2"
    );
    let lim = c["resources"]["limits"]["nvidia.com/gpu"].as_u64().unwrap();
    assert!(lim >= need);
    assert_eq!(
        c["resources"]["requests"]["nvidia.com/gpu"].as_u64(),
        Some(lim)
    );
    // Volumes: the HF cache, the data and the outputs, all mounted.
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&env_value(c, "HF_HOME")));
    assert!(env_value(c, "CORD_OUT").starts_with("/outputs/") && mounts.contains(&"/outputs"));
    assert!(env_value(c, "CORD_INPUT").starts_with("/data/") && mounts.contains(&"/data"));

    let merge: Value = serde_yaml_ng::from_str(&read("deploy/k8s/cord-merge-job.yaml")).unwrap();
    let m = &merge["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env_value(m, "SHARD_COUNT"), n.to_string());
    assert_eq!(env_value(m, "CORD_OUT"), env_value(c, "CORD_OUT"));
    let script = m["args"][0].as_str().unwrap();
    sh_syntax_ok(script);
    assert!(
        script.contains("cord merge") && script.contains("--input"),
        "{script}"
    );
}

#[test]
fn slurm_scripts_are_valid_bash_and_use_the_array() {
    for f in [
        "deploy/slurm/cord-array.sbatch",
        "deploy/slurm/cord-merge.sbatch",
        "deploy/slurm/submit.sh",
    ] {
        let o = Command::new("bash")
            .arg("-n")
            .arg(repo().join(f))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "bash -n {f}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let s = read("deploy/slurm/cord-array.sbatch");
    for needle in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        r#"shard="$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT""#,
        r#"--shard "$shard""#,
        "--resume",
        "#SBATCH --requeue",
        "pool-info --gpus",
    ] {
        assert!(s.contains(needle), "cord-array.sbatch lacks `{needle}`");
    }
    let submit = read("deploy/slurm/submit.sh");
    assert!(submit.contains("--dependency=\"afterok:$array_job\""));
    let merge = read("deploy/slurm/cord-merge.sbatch");
    assert!(merge.contains("out.shard-$i-of-$CORD_SHARDS.jsonl"));
    assert!(s.contains("out.shard-$SLURM_ARRAY_TASK_ID-of-$SLURM_ARRAY_TASK_COUNT.jsonl"));
}

/// The array script run as task 1 of 3 with a stub `cord`: it passes the shard and --resume.
#[test]
fn array_script_runs_its_shard() {
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("cord");
    let log = dir.path().join("args.txt");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\nif [ \"$1\" = pool-info ]; then echo 2; exit 0; fi\necho \"$@\" > {}\n",
            log.display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&stub).status().unwrap();
    let run = |visible: &str| {
        Command::new("bash")
            .arg(repo().join("deploy/slurm/cord-array.sbatch"))
            .env("CORD_BIN", &stub)
            .env("CORD_POOL", "pool.toml")
            .env("CORD_INPUT", "in.jsonl")
            .env("CORD_OUT", dir.path().join("run"))
            .env("CORD_ARGS", "--save-tree")
            .env("SLURM_ARRAY_TASK_ID", "1")
            .env("SLURM_ARRAY_TASK_COUNT", "3")
            .env("SLURM_ARRAY_TASK_MIN", "0")
            .env("SLURM_ARRAY_TASK_MAX", "2")
            .env("CUDA_VISIBLE_DEVICES", visible)
            .output()
            .unwrap()
    };
    let o = run("0");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs 2 GPU(s), this task has 1"));
    let o = run("4,5");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let args = std::fs::read_to_string(&log).unwrap();
    assert!(
        args.starts_with("synth --pool pool.toml --input in.jsonl --output "),
        "{args}"
    );
    assert!(
        args.contains("out.shard-1-of-3.jsonl --shard 1/3 --resume"),
        "{args}"
    );
    assert!(args.trim_end().ends_with("--save-tree"), "{args}");
}

#[test]
fn shard_flag_and_pool_info_errors_are_clear() {
    for (bad, msg) in [("3/3", "out of range"), ("1/0", "at least 1"), ("x", "I/N")] {
        let o = cord(&[
            "synth",
            "--pool",
            "models/demo.toml",
            "--input",
            "data/gsm8k.jsonl",
            "--output",
            "/nonexistent/out.jsonl",
            "--shard",
            bad,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(msg), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = cord(&["pool-info", "--gpus", "models/demo.toml"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "0",
        "the demo pool runs on the CPU"
    );
    let o = cord(&["pool-info", "models/paper.toml"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("teacher qwq: Qwen/QwQ-32B on cuda:1 (bf16)"),
        "{out}"
    );
    assert!(out.contains("gpus 3"), "{out}");
    let o = cord(&["pool-info", "/nonexistent/pool.toml"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("error: "));
}

/// `cord synth --shard` through the binary, without loading models: each shard's output already
/// holds a record (with the run's fingerprint) for every input id, so the run reports its share
/// and stops. The shares of N shards add up to the input (or to `--limit`), an empty shard still
/// leaves a (valid) output, and a shard's share does not depend on the input order.
#[test]
fn synth_shards_cover_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let o = cord(&["pool-info", "models/demo.toml"]);
    let info = String::from_utf8_lossy(&o.stdout);
    let fp = info
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no fingerprint in {info}"));
    let ids: Vec<String> = (0..40).map(|i| format!("p-{i}")).collect();
    let write_input = |name: &str, order: &[String]| {
        let path = dir.path().join(name);
        let text: String = order
            .iter()
            .map(|id| format!("{{\"id\":\"{id}\",\"question\":\"q?\",\"answer\":\"1\"}}\n"))
            .collect();
        std::fs::write(&path, text).unwrap();
        path
    };
    let input = write_input("in.jsonl", &ids);
    let mut reversed = ids.clone();
    reversed.reverse();
    let input_rev = write_input("in-rev.jsonl", &reversed);
    let done: String = ids
        .iter()
        .map(|id| format!("{{\"id\":\"{id}\",\"config\":{{\"pool\":\"{fp}\"}}}}\n"))
        .collect();
    // "shard I/N: n of K problems" -> n
    let share = |input: &Path, shard: &str, extra: &[&str]| -> (usize, String) {
        let out = dir
            .path()
            .join(format!("out-{}.jsonl", shard.replace('/', "-")));
        std::fs::write(&out, &done).unwrap();
        let mut args = vec![
            "synth",
            "--pool",
            "models/demo.toml",
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--shard",
            shard,
            "--resume",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let o = cord(&args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{shard}: {err}");
        assert!(
            err.contains("nothing to do"),
            "{shard} went on to load models: {err}"
        );
        let n = err
            .lines()
            .find_map(|l| l.strip_prefix(&format!("shard {shard}: ")))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no share line: {err}"))
            .parse()
            .unwrap();
        (n, err)
    };
    for n in [1usize, 3, 7] {
        let mut total = 0;
        for i in 0..n {
            let shard = format!("{i}/{n}");
            let (k, err) = share(&input, &shard, &[]);
            assert!(err.contains(&format!("{k} of 40 problems")), "{err}");
            assert_eq!(
                share(&input_rev, &shard, &[]).0,
                k,
                "order changed shard {shard}"
            );
            total += k;
        }
        assert_eq!(total, 40, "{n} shards");
        let limited: usize = (0..n)
            .map(|i| share(&input, &format!("{i}/{n}"), &["--limit", "9"]).0)
            .sum();
        assert_eq!(limited, 9, "--limit 9 over {n} shards");
    }
    // An empty shard (40 ids cannot fill 1000 shards; found with the resumed runs above, which
    // never load models) writes an empty, valid output on a fresh run.
    let shard = (0..20)
        .map(|i| format!("{i}/1000"))
        .find(|s| share(&input, s, &[]).0 == 0)
        .expect("an empty shard among the first 20 of 1000");
    let out = dir.path().join("empty.jsonl");
    let o = cord(&[
        "synth",
        "--pool",
        "models/demo.toml",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--shard",
        &shard,
        "--quiet",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains(&format!("shard {shard}: 0 of 40")),
        "{err}"
    );
    let empty = std::fs::read(&out).unwrap();
    assert_eq!(empty, b"");
}
