//! `cord report` end to end: records built with the crate's own types (with adversarial text),
//! rendered by the binary, then loaded in headless Chromium: no script errors, one section per
//! problem, one node per candidate, the collaboration plot, the text shown verbatim, and a
//! screenshot. Without /usr/bin/chromium the browser part is skipped with a visible message.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cord_decode::config::Method;
use cord_decode::io::{Message, Record, RecordConfig, RecordStats, StepRecord, TreeEntry};

const CHROMIUM: &str = "/usr/bin/chromium";
const EVIL: &str = "</script><script>document.title='PWNED'</script><!-- \"double\" 'single' \
                    ünïcødé 数学 ✓ \u{2028} & &amp; </SCRIPT >";
const TEACHERS: [&str; 2] = ["alpha", "beta"];

fn step(index: usize, teacher: &str, text: &str, score: f64) -> StepRecord {
    StepRecord {
        index,
        text: text.to_string(),
        teacher: teacher.to_string(),
        score,
        mean_logprob: Some(score.ln()),
        m: Some(2),
        tokens: 7,
        candidates: 4,
        finish: "step".into(),
        also_proposed_by: Vec::new(),
        scorers: Vec::new(),
        visits: None,
    }
}

/// A CoRD-shaped record: width 2, both teachers propose for each live beam, 3 steps; the top 2
/// are kept; the chosen trajectory is the chain of best candidates.
fn record(id: &str, correct: bool, evil_at: Option<usize>) -> Record {
    let mut tree = Vec::new();
    let mut live: Vec<(u64, usize)> = vec![(0, 0)]; // (id, rank)
    let mut next = 1u64;
    let mut steps = Vec::new();
    let mut best_parent_text: Vec<String> = Vec::new();
    let mut chain: Vec<u64> = Vec::new();
    for s in 1..=3usize {
        let mut cands = Vec::new();
        for &(pid, rank) in &live {
            for (k, t) in TEACHERS.iter().enumerate() {
                let text = if evil_at == Some(s) && rank == 0 && k == 1 {
                    format!("### Step {s}. {EVIL}\n")
                } else {
                    format!("### Step {s}. {t} on beam {pid}: 2 + {k} = {}\n", 2 + k)
                };
                let score = 0.9 - 0.1 * (rank * 2 + (1 - k)) as f64 - 0.01 * s as f64;
                cands.push((next, pid, rank, t.to_string(), text, score));
                next += 1;
            }
        }
        cands.sort_by(|a, b| b.5.total_cmp(&a.5));
        for (i, c) in cands.iter().enumerate() {
            tree.push(TreeEntry {
                step: s,
                id: c.0,
                parent: Some(c.1),
                parent_rank: Some(c.2),
                teacher: c.3.clone(),
                text: c.4.clone(),
                score: Some(c.5),
                kept: i < 2,
                finished: s == 3 && i < 2,
                note: None,
                scorers: Vec::new(),
            });
        }
        // The best candidate always extends the previous best (rank 0).
        let best = &cands[0];
        assert!(chain.last().is_none_or(|&p| p == best.1));
        chain.push(best.0);
        steps.push(step(s, &best.3, &best.4, best.5));
        best_parent_text.push(best.4.clone());
        live = cands[..2]
            .iter()
            .enumerate()
            .map(|(r, c)| (c.0, r))
            .collect();
    }
    // A duplicate entry, as dedupe writes it.
    tree.push(TreeEntry {
        step: 3,
        id: next,
        parent: Some(live[1].0),
        parent_rank: Some(1),
        teacher: "beta".into(),
        text: "### Step 3. dup\n".into(),
        score: None,
        kept: false,
        finished: false,
        note: Some(format!("duplicate of {}", chain[2])),
        scorers: Vec::new(),
    });
    let reasoning: String = best_parent_text.concat();
    Record {
        id: id.to_string(),
        question: format!("What is 2 + 2? {EVIL}"),
        answer: "4".into(),
        method: Method::Cord,
        steps,
        final_answer: format!(
            "The answer is \\boxed{{{}}}. {EVIL}",
            if correct { 4 } else { 5 }
        ),
        answer_teacher: "alpha".into(),
        predicted: Some(if correct { "4" } else { "5" }.into()),
        predicted_normalized: Some(if correct { "4" } else { "5" }.into()),
        correct,
        attempts: Vec::new(),
        score: 0.8,
        forced_close: false,
        natural_end: false,
        failed: None,
        answer_truncated: false,
        response: format!("<think>\n{reasoning}\n</think>\n\n"),
        messages: vec![Message {
            role: "user".into(),
            content: "What is 2 + 2?".into(),
        }],
        config: RecordConfig {
            beam: 2,
            think_budget: 100,
            answer_budget: 50,
            step_cap: 30,
            max_steps: 10,
            seed: 0,
            method: Method::Cord,
            step_unit: "prompt-guided".into(),
            scorer: "meta-prover".into(),
            pool: "00112233aabbccdd".into(),
        },
        stats: RecordStats {
            seconds: Some(1.5),
            ..RecordStats::default()
        },
        tree: Some(tree),
    }
}

fn write_records(path: &Path, recs: &[Record]) {
    let text: String = recs
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

fn cord(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cord"))
        .args(args)
        .output()
        .expect("run cord")
}

/// Runs Chromium headless with a fresh profile; kills it after `limit`.
fn chromium(profile: &Path, extra: &[String], limit: Duration) -> std::process::Output {
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start chromium");
    let t0 = Instant::now();
    loop {
        if child.try_wait().expect("wait chromium").is_some() {
            return child.wait_with_output().expect("chromium output");
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("chromium output");
            panic!(
                "chromium ran past {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn html_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

#[test]
fn report_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("out.jsonl");
    let recs = vec![
        record("gsm-1", true, Some(2)),
        record("gsm-2 \"quoted\" </script>", false, None),
    ];
    write_records(&records, &recs);
    let html_path: PathBuf = dir.path().join("report.html");
    let o = cord(&[
        "report",
        records.to_str().unwrap(),
        "--output",
        html_path.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "cord report failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("2 problems (1 correct)"), "{stdout}");
    let html = std::fs::read_to_string(&html_path).unwrap();

    // Self-contained, and the record text cannot end the data element early.
    assert_eq!(html.matches("<script").count(), 3, "three script elements");
    assert_eq!(html.to_ascii_lowercase().matches("</script").count(), 3);
    assert!(!html.contains("<!--"));
    for needle in ["src=", "href=", "@import", "url(", "<link", "https://"] {
        assert!(!html.contains(needle), "report references `{needle}`");
    }
    assert_eq!(
        html.matches("http://").count(),
        1,
        "only the SVG namespace URI"
    );
    let start = html
        .find(r#"<script type="application/json" id="cord-data">"#)
        .unwrap();
    let json_start = html[start..].find('>').unwrap() + start + 1;
    let json_end = html[json_start..].find("</script>").unwrap() + json_start;
    let data: serde_json::Value = serde_json::from_str(&html[json_start..json_end]).unwrap();
    assert_eq!(data["problems"].as_array().unwrap().len(), 2);
    assert_eq!(
        data["problems"][0]["question"],
        format!("What is 2 + 2? {EVIL}")
    );
    // The chosen chain was found in the tree: 3 nodes, the kept best of each step.
    let path = data["problems"][0]["path"].as_array().unwrap();
    assert_eq!(path.len(), 3, "{path:?}");
    // Collaboration plot: 5 bins, shares sum to 1 where there are steps.
    let shares = data["collab"]["shares"].as_array().unwrap();
    assert_eq!(shares.len(), 5);
    for b in shares {
        let s: f64 = b
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        assert!(s == 0.0 || (s - 1.0).abs() < 1e-9, "{b:?}");
    }

    if !Path::new(CHROMIUM).exists() {
        eprintln!(
            "SKIPPED: {CHROMIUM} not found (apt-get install chromium); browser checks not run"
        );
        return;
    }
    let url = format!("file://{}", html_path.display());
    let o = chromium(
        &dir.path().join("profile-dom"),
        &["--dump-dom".to_string(), url.clone()],
        Duration::from_secs(120),
    );
    let dom = String::from_utf8_lossy(&o.stdout);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium --dump-dom failed:\n{log}");
    assert!(
        dom.contains(r#"data-rendered="ok""#),
        "script did not finish:\n{log}"
    );
    assert!(
        dom.contains(r#"<pre id="cord-errors"></pre>"#),
        "page errors: {dom}"
    );
    for bad in ["Uncaught", "CONSOLE(", "SyntaxError", "TypeError"] {
        // `--enable-logging=stderr` prints console messages as `CONSOLE(...)` lines.
        assert!(!log.contains(bad), "console output `{bad}`:\n{log}");
    }
    // The record text neither ran nor became markup.
    assert!(
        dom.contains("<title>cord report: "),
        "document title changed"
    );
    assert!(
        !dom.contains("<script>document.title"),
        "record text became markup"
    );
    assert_eq!(dom.matches(r#"class="card problem""#).count(), 2);
    let nodes: usize = recs.iter().map(|r| r.tree.as_ref().unwrap().len()).sum();
    assert_eq!(dom.matches(r#"<g class="node "#).count(), nodes);
    assert_eq!(dom.matches("node kept").count(), 2 * 3 * 2);
    assert_eq!(
        dom.matches(r#"class="node kept on-path""#).count(),
        2 * 3,
        "trajectory nodes"
    );
    assert_eq!(dom.matches(r#"class="edge kept on-path""#).count(), 2 * 3);
    assert!(dom.contains(r#"id="collab-plot""#));
    let bars = shares
        .iter()
        .flat_map(|b| b.as_array().unwrap().iter())
        .filter(|x| x.as_f64().unwrap() > 0.0)
        .count();
    assert!(bars >= 3);
    assert_eq!(dom.matches(r#"class="collab-bar""#).count(), bars);
    assert!(dom.contains(r#"data-problem-id="gsm-2 &quot;quoted&quot; "#));
    // The adversarial text is shown verbatim as text (HTML-escaped in the serialized DOM).
    let shown = html_text(&format!("### Step 2. {EVIL}"));
    assert!(
        dom.contains(&shown),
        "adversarial step text not shown verbatim"
    );
    assert!(dom.contains("ünïcødé 数学 ✓"));

    let shot = dir.path().join("shot.png");
    let o = chromium(
        &dir.path().join("profile-shot"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,1400".to_string(),
            "--hide-scrollbars".to_string(),
            url,
        ],
        Duration::from_secs(120),
    );
    assert!(
        o.status.success(),
        "chromium --screenshot failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

#[test]
fn records_without_trees_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("out.jsonl");
    let mut r = record("p1", true, None);
    r.tree = None;
    write_records(&records, &[r]);
    let o = cord(&["report", records.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--save-tree") && err.contains("`p1`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!dir.path().join("out.html").exists());
}

#[test]
fn torn_last_line_is_skipped_and_default_output_is_next_to_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("out.jsonl");
    write_records(&records, &[record("p1", true, None)]);
    let full = serde_json::to_string(&record("p2", true, None)).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&records)
        .unwrap();
    std::io::Write::write_all(&mut f, &full.as_bytes()[..full.len() / 3]).unwrap();
    let o = cord(&["report", records.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("torn last line"));
    let html = std::fs::read_to_string(dir.path().join("out.html")).unwrap();
    assert!(html.contains(r#""id":"p1""#) && !html.contains(r#""id":"p2""#));
}
