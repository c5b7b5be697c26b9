//! Load: 32 concurrent clients × 4 requests each (chat and completions, streaming and not, on
//! both tiny models), a quarter of them disconnecting mid-request. Every completed response must
//! be valid, the server must answer afterwards, and the engine must be back to zero live
//! sequences with no KV block unaccounted for.

mod common;

use std::time::Duration;

use common::{Fixture, LLAMA, QWEN, parse_sse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const CLIENTS: usize = 32;
const REQUESTS: usize = 4;

#[derive(Debug, Default)]
struct Tally {
    completed: usize,
    disconnected: usize,
}

async fn client(base: String, id: usize) -> Tally {
    let http = reqwest::Client::new();
    let mut rng = StdRng::seed_from_u64(id as u64);
    let mut tally = Tally::default();
    for r in 0..REQUESTS {
        let model = if rng.random_bool(0.5) { LLAMA } else { QWEN };
        let chat = rng.random_bool(0.5);
        let stream = rng.random_bool(0.5);
        let disconnect = rng.random_bool(0.25);
        let max_tokens = rng.random_range(4..=48);
        let (path, body) = if chat {
            (
                "/v1/chat/completions",
                json!({"model": model, "messages": [{"role": "user", "content": format!("client {id} request {r}")}],
                       "max_tokens": max_tokens, "temperature": 0.8, "seed": id * 10 + r, "stream": stream}),
            )
        } else {
            (
                "/v1/completions",
                json!({"model": model, "prompt": format!("Client {id} says"), "max_tokens": max_tokens,
                       "temperature": 0.8, "seed": id * 10 + r, "stream": stream}),
            )
        };
        let send = http.post(format!("{base}{path}")).json(&body).send();
        if disconnect {
            if stream {
                // Read the first chunk, then drop the connection.
                let mut resp = send.await.unwrap();
                assert_eq!(resp.status(), 200);
                let _ = resp.chunk().await;
                drop(resp);
            } else {
                // Give up before the answer arrives (the request is dropped mid-flight).
                let _ = tokio::time::timeout(Duration::from_millis(rng.random_range(1..20)), send)
                    .await;
            }
            tally.disconnected += 1;
            continue;
        }
        let resp = send.await.unwrap();
        assert_eq!(resp.status(), 200, "client {id} request {r}");
        let text = resp.text().await.unwrap();
        let completion = if stream {
            let events = parse_sse(&text);
            assert_eq!(
                events.last().unwrap().1,
                "[DONE]",
                "client {id} request {r}: {text}"
            );
            let mut usage = Value::Null;
            let mut finished = false;
            for (_, d) in &events[..events.len() - 1] {
                let v: Value = serde_json::from_str(d).unwrap();
                assert!(v.get("error").is_none(), "{v}");
                if !v["usage"].is_null() {
                    usage = v["usage"].clone();
                }
                finished |= v["choices"][0]["finish_reason"].is_string();
            }
            assert!(finished, "client {id} request {r}: no finish reason");
            usage["completion_tokens"].as_u64().unwrap()
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            let c = &v["choices"][0];
            assert!(c["finish_reason"].is_string(), "{v}");
            if chat {
                assert!(c["message"]["content"].is_string());
            } else {
                assert!(c["text"].is_string());
            }
            v["usage"]["completion_tokens"].as_u64().unwrap()
        };
        assert!(
            (1..=max_tokens as u64).contains(&completion),
            "client {id} request {r}: {completion} tokens for max_tokens {max_tokens}"
        );
        tally.completed += 1;
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_clients_with_disconnects_leave_no_sequence_behind() {
    let fx = Fixture::new();
    let srv = fx.serve(common::config());
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(srv.base.clone(), id)))
        .collect();
    let mut completed = 0;
    let mut disconnected = 0;
    for t in tasks {
        let tally = t.await.unwrap();
        completed += tally.completed;
        disconnected += tally.disconnected;
    }
    assert_eq!(completed + disconnected, CLIENTS * REQUESTS);
    assert!(disconnected > 0 && completed > CLIENTS * REQUESTS / 2);

    // The server still answers.
    let (s, v) = srv
        .post("/v1/chat/completions", &json!({"model": QWEN, "messages": [{"role": "user", "content": "still there?"}], "max_tokens": 4}))
        .await;
    assert_eq!(s, 200, "{v}");

    // Disconnected requests may still be running in the engine for a moment; then nothing is
    // left: no live sequence, every used block held by the prefix cache.
    let mut state = srv.engine().await;
    for _ in 0..200 {
        if state.models.iter().all(|m| m.live_sequences == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        state = srv.engine().await;
    }
    eprintln!("{completed} completed, {disconnected} disconnected; engine: {state:?}");
    for m in &state.models {
        assert_eq!(m.live_sequences, 0, "{m:?}");
        assert_eq!(m.leaked_blocks, 0, "{m:?}");
        assert_eq!(
            m.kv_blocks - m.free_blocks,
            m.prefix_cache_blocks,
            "blocks in use beyond the prefix cache: {m:?}"
        );
    }
    // Concurrent clients were batched together.
    assert!(state.max_batch >= 2, "{state:?}");
}
