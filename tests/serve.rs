//! `cord serve` as a process: it loads a pool, prints where it listens, answers HTTP, and stops
//! on SIGTERM with exit status 0; bad flags are one-line errors. (The endpoints themselves are
//! tested in crates/cord-serve/tests.)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;

use common::*;
use serde_json::Value;

/// One HTTP/1.1 request with `Connection: close`; (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // Chunked body: size line, data, CRLF, ..., 0.
        let mut out = String::new();
        let mut r = rest;
        loop {
            let (size, tail) = r.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            r = &tail[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, body)
}

#[cfg(unix)]
#[test]
fn serve_answers_and_stops_on_sigterm_with_status_zero() {
    let f = Fixture::new();
    let pool = f.pool("pool.toml", "");
    let mut child = cord()
        .args(["serve", "--pool"])
        .arg(&pool)
        .args(["--port", "0", "--kv-mib", "4"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let line = lines
            .next()
            .expect("cord serve ended before listening")
            .unwrap();
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("serving ") {
            let url = rest.split(" on http://").nth(1).unwrap();
            break url.split_whitespace().next().unwrap().to_string();
        }
    };
    assert!(
        seen[seen.len() - 1].starts_with(&format!("serving {}, {} on", TEACHERS[0], TEACHERS[1])),
        "{seen:?}"
    );

    let (s, body) = http(&addr, "GET", "/v1/models", "");
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][1]["id"], TEACHERS[1]);
    let (s, body) = http(
        &addr,
        "POST",
        "/v1/cord",
        r#"{"id": "q1", "question": "What is 2 + 3?", "answer": "5"}"#,
    );
    assert_eq!(s, 200, "{body}");
    let rec: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rec["id"], "q1");
    assert_eq!(rec["answer"], "5");
    let (s, body) = http(&addr, "POST", "/v1/completions", "{not json");
    assert_eq!(s, 400, "{body}");

    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert_eq!(rest.last().map(String::as_str), Some("stopped"), "{rest:?}");
    assert!(!rest.iter().any(|l| l.contains("panicked")), "{rest:?}");
}

#[test]
fn serve_bad_flags_are_one_line_errors() {
    let f = Fixture::new();
    let out = cord().arg("serve").output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--pool"), "{}", stderr(&out));

    let missing = f.path("nope.gguf");
    let out = cord()
        .args(["serve", "--port", "0", "--model"])
        .arg(format!("m={}", missing.display()))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.starts_with("error: ") && err.contains("nope.gguf"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = cord()
        .args(["serve", "--port", &port, "--kv-mib", "4", "--model"])
        .arg(&f.llama)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let pool = f.pool("pool.toml", "");
    let out = cord()
        .args(["serve", "--kv-mib", "0", "--pool"])
        .arg(&pool)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--kv-mib 0"), "{}", stderr(&out));
}
