//! Every endpoint and error path of the server over HTTP, on two tiny generated models served as
//! a pool (random weights: the texts are gibberish; the tests check mechanics and consistency).

mod common;

use std::sync::Arc;

use common::{Fixture, LLAMA, QWEN, Running, assert_error, config};
use cord_decode::Settings;
use cord_decode::io::{Problem, Record};
use cord_serve::{EngineBackend, Models, ServeConfig};
use serde_json::{Value, json};

fn chat_body(model: &str, seed: u64, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 6 * 7?"}
        ],
        "max_tokens": 12,
        "temperature": 0.9,
        "seed": seed,
        "stream": stream,
    })
}

/// Text of a streamed chat or completion: content deltas per choice, finish reasons, usage.
fn collect_stream(events: &[(String, String)], chat: bool) -> (Vec<String>, Vec<String>, Value) {
    assert_eq!(
        events.last().map(|e| e.1.as_str()),
        Some("[DONE]"),
        "{events:?}"
    );
    let mut texts: Vec<String> = Vec::new();
    let mut finish: Vec<String> = Vec::new();
    let mut usage = Value::Null;
    for (_, data) in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(data).unwrap();
        assert!(v.get("error").is_none(), "error event: {v}");
        assert_eq!(
            v["object"],
            if chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            }
        );
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if texts.len() <= i {
                texts.resize(i + 1, String::new());
                finish.resize(i + 1, String::new());
            }
            let piece = if chat {
                &c["delta"]["content"]
            } else {
                &c["text"]
            };
            if let Some(t) = piece.as_str() {
                texts[i].push_str(t);
            }
            if let Some(f) = c["finish_reason"].as_str() {
                assert!(finish[i].is_empty(), "two finish reasons for choice {i}");
                finish[i] = f.to_string();
            }
        }
    }
    (texts, finish, usage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_chat_completions_and_streams_agree() {
    let fx = Fixture::new();
    let srv = fx.serve(config());

    let (s, v) = srv.get("/health").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    let (s, v) = srv.get("/v1/models").await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [LLAMA, QWEN]);
    let (s, v) = srv.get(&format!("/v1/models/{QWEN}")).await;
    assert_eq!((s, v["id"].as_str()), (200, Some(QWEN)));
    let (s, v) = srv.get("/v1/models/nope").await;
    assert_error(s, &v, 404, "unknown model id");

    for model in [LLAMA, QWEN] {
        // Non-streaming chat: one choice, usage, a finish reason; the same seed gives the same
        // text, and streaming gives the same text as not streaming.
        let (s, a) = srv
            .post("/v1/chat/completions", &chat_body(model, 5, false))
            .await;
        assert_eq!(s, 200, "{a}");
        assert_eq!(a["object"], "chat.completion");
        assert_eq!(a["model"], model);
        let choice = &a["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        let text = choice["message"]["content"].as_str().unwrap().to_string();
        let fr = choice["finish_reason"].as_str().unwrap();
        assert!(fr == "stop" || fr == "length", "{fr}");
        let u = &a["usage"];
        let completion = u["completion_tokens"].as_u64().unwrap();
        assert!((1..=12).contains(&completion), "{u}");
        assert!(u["prompt_tokens"].as_u64().unwrap() > 5);
        assert_eq!(
            u["total_tokens"].as_u64(),
            Some(u["prompt_tokens"].as_u64().unwrap() + completion)
        );
        let (_, b) = srv
            .post("/v1/chat/completions", &chat_body(model, 5, false))
            .await;
        assert_eq!(
            b["choices"][0]["message"]["content"].as_str(),
            Some(text.as_str())
        );
        let (s, events) = srv
            .stream("/v1/chat/completions", &chat_body(model, 5, true))
            .await;
        assert_eq!(s, 200);
        let first: Value = serde_json::from_str(&events[0].1).unwrap();
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let (texts, finish, usage) = collect_stream(&events, true);
        assert_eq!(texts, std::slice::from_ref(&text), "{model}: stream vs not");
        assert_eq!(finish, [fr]);
        assert_eq!(usage, a["usage"]);
        // Another seed samples another text (12 tokens at temperature 0.9 from random weights).
        let others: Vec<String> = futures_util::future::join_all((6..9).map(|seed| {
            let srv = &srv;
            async move {
                let (_, v) = srv
                    .post("/v1/chat/completions", &chat_body(model, seed, false))
                    .await;
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
        }))
        .await;
        assert!(
            others.iter().any(|o| *o != text),
            "{model}: every seed gave {text:?}"
        );
    }

    // Completions: two prompts × n = 2, a stop string, streaming with a usage chunk.
    let body = json!({
        "model": QWEN, "prompt": ["The answer is", "Step 1."], "n": 2, "max_tokens": 10,
        "temperature": 1.0, "seed": 1, "stop": ["\n\n"],
    });
    let (s, v) = srv.post("/v1/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"].as_u64(), Some(i as u64));
        assert!(!c["text"].as_str().unwrap().contains("\n\n"));
    }
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let (_, events) = srv.stream("/v1/completions", &sbody).await;
    let (texts, _, usage) = collect_stream(&events, false);
    let want: Vec<&str> = choices
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, want);
    assert_eq!(usage, v["usage"]);
    // The usage chunk has no choices.
    let last: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(last["choices"], json!([]));

    // Greedy is deterministic whatever the seed.
    let greedy = |seed: u64| json!({"model": LLAMA, "prompt": "abc", "max_tokens": 8, "temperature": 0, "seed": seed});
    let (_, g1) = srv.post("/v1/completions", &greedy(1)).await;
    let (_, g2) = srv.post("/v1/completions", &greedy(2)).await;
    assert_eq!(g1["choices"][0]["text"], g2["choices"][0]["text"]);

    let st = srv.engine().await;
    assert!(
        st.models
            .iter()
            .all(|m| m.live_sequences == 0 && m.leaked_blocks == 0),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_echo_and_score_agree() {
    let fx = Fixture::new();
    let srv = fx.serve(config());

    for model in [LLAMA, QWEN] {
        let prompt = "What is 6 * 7? The answer is";
        // /v1/score of a continuation.
        let (s, sc) = srv
            .post(
                "/v1/score",
                &json!({"model": model, "context": prompt, "continuations": [" 42.", " 41", " 6 * 7 = 42"], "top_logprobs": 3}),
            )
            .await;
        assert_eq!(s, 200, "{sc}");
        let data = sc["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        for d in data {
            let lps: Vec<f64> = d["logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(lps.len(), d["tokens"].as_array().unwrap().len());
            assert!(!lps.is_empty() && lps.iter().all(|&l| l < 0.0));
            let sum: f64 = lps.iter().sum();
            assert!((d["sum"].as_f64().unwrap() - sum).abs() < 1e-4);
            assert!((d["mean"].as_f64().unwrap() - sum / lps.len() as f64).abs() < 1e-4);
            let tops = d["top_logprobs"].as_array().unwrap();
            assert_eq!(tops.len(), lps.len());
            for (k, t) in tops.iter().enumerate() {
                let t = t.as_array().unwrap();
                assert_eq!(t.len(), 3);
                let best = t[0]["logprob"].as_f64().unwrap();
                assert!(
                    best >= lps[k] - 1e-4,
                    "top {best} below the token's {}",
                    lps[k]
                );
                assert!(
                    t.windows(2)
                        .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64())
                );
            }
        }

        // Completions with echo + logprobs and max_tokens 0 (how harnesses score a text): the
        // prompt's log-probs, equal to /v1/score of the same split.
        let (s, v) = srv
            .post(
                "/v1/completions",
                &json!({"model": model, "prompt": format!("{prompt} 42."), "max_tokens": 0, "echo": true, "logprobs": 1}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let c = &v["choices"][0];
        assert_eq!(c["text"].as_str(), Some(format!("{prompt} 42.").as_str()));
        let lp = &c["logprobs"];
        let tokens: Vec<&str> = lp["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let token_lps = lp["token_logprobs"].as_array().unwrap();
        assert_eq!(tokens.len(), token_lps.len());
        assert_eq!(v["usage"]["completion_tokens"], 0);
        // byte-llama prepends a BOS: every prompt token has a log-prob; qwen2 does not: the
        // first token has none, as OpenAI writes it.
        if model == LLAMA {
            assert!(token_lps.iter().all(Value::is_number));
            assert_eq!(
                tokens.len() as u64,
                v["usage"]["prompt_tokens"].as_u64().unwrap() - 1
            );
        } else {
            assert!(token_lps[0].is_null());
            assert!(token_lps[1..].iter().all(Value::is_number));
            assert_eq!(
                tokens.len() as u64,
                v["usage"]["prompt_tokens"].as_u64().unwrap()
            );
        }
        assert_eq!(tokens.concat(), format!("{prompt} 42."));
        let offsets = lp["text_offset"].as_array().unwrap();
        assert_eq!(offsets[0], 0);
        // The tail of the echo log-probs is the score of " 42." after the prompt.
        let s42: Vec<f64> = data[0]["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let tail: Vec<f64> = token_lps[token_lps.len() - s42.len()..]
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (a, b) in s42.iter().zip(&tail) {
            assert!(
                (a - b).abs() < 1e-4,
                "{model}: score {s42:?} vs echo {tail:?}"
            );
        }
        let tops = lp["top_logprobs"].as_array().unwrap();
        assert_eq!(tops.len(), tokens.len());
        assert!(
            tops.iter()
                .skip(1)
                .all(|t| t.as_object().is_some_and(|o| o.len() == 1))
        );

        // Chat logprobs: one entry per scored completion token, with the top alternatives.
        let mut body = chat_body(model, 3, false);
        body["logprobs"] = json!(true);
        body["top_logprobs"] = json!(2);
        let (s, v) = srv.post("/v1/chat/completions", &body).await;
        assert_eq!(s, 200, "{v}");
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
        assert!(!content.is_empty() || text.is_empty());
        let joined: String = content
            .iter()
            .map(|c| c["token"].as_str().unwrap())
            .collect();
        // Tokens that are parts of one multi-byte character decode to U+FFFD each.
        if text.is_ascii() {
            assert_eq!(joined, text);
        }
        for c in content {
            assert!(c["logprob"].as_f64().unwrap() <= 0.0);
            assert_eq!(c["top_logprobs"].as_array().unwrap().len(), 2);
            assert_eq!(
                c["bytes"].as_array().unwrap().len(),
                c["token"].as_str().unwrap().len()
            );
        }
    }
}

/// Runs the pool's search on one problem in process, as `cord synth` does.
fn synth_record(fx: &Fixture, problem: Problem, seed: u64) -> Record {
    let mut pool = fx.pool();
    pool.search.seed = seed;
    let settings = Settings::shared(&pool).unwrap();
    let mut backend = EngineBackend::from_pool(&pool, &Fixture::backend_options()).unwrap();
    let mut out: Vec<Record> = Vec::new();
    cord_decode::run(
        &mut backend,
        &settings,
        vec![problem],
        &mut out,
        &mut |_| {},
    )
    .unwrap();
    out.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cord_runs_the_pools_search_and_streams_its_steps() {
    let fx = Fixture::new();
    let srv = fx.serve(config());
    let body = json!({"id": "p1", "question": "What is 6 * 7?", "answer": "42", "seed": 9});

    let r = srv
        .http
        .post(srv.url("/v1/cord"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = r.text().await.unwrap();
    // The record exactly as `cord synth` writes it (same pool, seed and problem).
    let want = synth_record(
        &fx,
        Problem {
            id: "p1".into(),
            question: "What is 6 * 7?".into(),
            answer: "42".into(),
            line: 0,
        },
        9,
    );
    assert_eq!(line, serde_json::to_string(&want).unwrap());
    let rec: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(rec["id"], "p1");
    assert!(!rec["steps"].as_array().unwrap().is_empty());

    // Streamed: one `step` event per kept step, then the same record, then [DONE].
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let (s, events) = srv.stream("/v1/cord", &sbody).await;
    assert_eq!(s, 200);
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names.last(), Some(&"message"));
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert_eq!(names[names.len() - 2], "record");
    assert_eq!(events[events.len() - 2].1, line);
    let steps: Vec<Value> = events
        .iter()
        .filter(|e| e.0 == "step")
        .map(|e| serde_json::from_str(&e.1).unwrap())
        .collect();
    assert!(!steps.is_empty());
    for st in &steps {
        assert!(st["teacher"] == LLAMA || st["teacher"] == QWEN, "{st}");
        assert!(st["candidates"].as_u64().unwrap() >= 1);
        assert!(st["score"].is_number() && st["text"].is_string());
    }
    // Every step of the record's trajectory was streamed when it was kept.
    for rs in rec["steps"].as_array().unwrap() {
        assert!(
            steps.iter().any(|s| s["index"] == rs["index"]
                && s["text"] == rs["text"]
                && s["teacher"] == rs["teacher"]),
            "record step {rs} was not streamed"
        );
    }

    // Per-request overrides: greedy with beam 1 keeps one step per round.
    let (s, v) = srv
        .post("/v1/cord", &json!({"question": "What is 2 + 2?", "answer": "4", "method": "greedy", "max_steps": 2, "think_budget": 24}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["method"], "greedy");
    assert!(v["steps"].as_array().unwrap().len() <= 2);
    assert!(v["id"].as_str().unwrap().starts_with("request-"));

    // Bad CoRD requests.
    for (b, what) in [
        (json!({"question": "q"}), "no answer"),
        (json!({"question": " ", "answer": "1"}), "empty question"),
        (
            json!({"question": "q", "answer": "1", "method": "nope"}),
            "unknown method",
        ),
        (
            json!({"question": "q", "answer": "1", "beam_width": 0}),
            "beam 0",
        ),
        (
            json!({"question": "q", "answer": "1", "think_budget": 100000}),
            "budget over the cap",
        ),
        (
            json!({"question": "q", "answer": "1", "max_steps": -1}),
            "negative",
        ),
        (json!({"answer": "1"}), "no question"),
    ] {
        let (s, v) = srv.post("/v1/cord", &b).await;
        assert_error(s, &v, 400, what);
    }
    let st = srv.engine().await;
    assert!(
        st.models
            .iter()
            .all(|m| m.live_sequences == 0 && m.leaked_blocks == 0),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_the_server_stays_up() {
    let fx = Fixture::new();
    let srv = fx.serve(ServeConfig {
        max_body_bytes: 64 << 10,
        ..config()
    });
    let chat = |extra: Value| {
        let mut b = chat_body(LLAMA, 1, false);
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/chat/completions",
            chat(json!({"model": "nope"})),
            404,
            "unknown model",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"temperature": -1})),
            400,
            "negative temperature",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"temperature": 3})),
            400,
            "temperature above 2",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"top_p": 0})),
            400,
            "top_p 0",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"top_p": 1.5})),
            400,
            "top_p above 1",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"min_p": 2})),
            400,
            "min_p above 1",
        ),
        ("/v1/chat/completions", chat(json!({"n": 0})), 400, "n 0"),
        (
            "/v1/chat/completions",
            chat(json!({"n": 99})),
            400,
            "n above the cap",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 0})),
            400,
            "max_tokens 0",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": -3})),
            400,
            "negative max_tokens",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 65})),
            400,
            "max_tokens above the cap",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"messages": []})),
            400,
            "no messages",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"messages": [{"role": "wizard", "content": "hi"}]})),
            400,
            "unknown role",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})),
            400,
            "image part",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"messages": "hi"})),
            400,
            "messages not a list",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"top_logprobs": 2})),
            400,
            "top_logprobs without logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": 50})),
            400,
            "top_logprobs above 20",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "stream": true})),
            400,
            "streamed logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"stop": ["", "x"]})),
            400,
            "empty stop string",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"seed": "x"})),
            400,
            "seed not a number",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            400,
            "no model",
        ),
        (
            "/v1/completions",
            json!({"model": LLAMA, "prompt": [1, 2, 3]}),
            400,
            "token-id prompt",
        ),
        (
            "/v1/completions",
            json!({"model": QWEN, "prompt": ""}),
            400,
            "empty prompt",
        ),
        (
            "/v1/completions",
            json!({"model": LLAMA, "prompt": "a", "max_tokens": 0}),
            400,
            "max_tokens 0 without echo",
        ),
        (
            "/v1/completions",
            json!({"model": LLAMA, "prompt": "a", "echo": true, "stream": true}),
            400,
            "streamed echo",
        ),
        (
            "/v1/completions",
            json!({"model": LLAMA, "prompt": "a".repeat(5000)}),
            400,
            "prompt longer than the context",
        ),
        (
            "/v1/completions",
            json!({"model": LLAMA, "prompt": "a".repeat(4000), "max_tokens": 64}),
            400,
            "prompt + max_tokens longer than the context",
        ),
        (
            "/v1/score",
            json!({"model": LLAMA, "context": "a", "continuations": []}),
            400,
            "no continuation",
        ),
        (
            "/v1/score",
            json!({"model": LLAMA, "context": "a", "continuations": [""]}),
            400,
            "empty continuation",
        ),
        (
            "/v1/score",
            json!({"model": QWEN, "context": "", "continuations": ["x"]}),
            400,
            "nothing to condition on",
        ),
        (
            "/v1/score",
            json!({"model": "nope", "context": "a", "continuations": ["b"]}),
            404,
            "score: unknown model",
        ),
    ];
    for (path, body, want, what) in &cases {
        let (s, v) = srv.post(path, body).await;
        assert_error(s, &v, *want, what);
    }
    let (s, v) = srv
        .post(
            "/v1/completions",
            &json!({"model": LLAMA, "prompt": "a".repeat(5000)}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("context_length_exceeded"))
    );

    // Malformed and oversized bodies, unknown routes and methods.
    let (s, v) = srv
        .post_raw("/v1/chat/completions", b"{\"model\": ".to_vec())
        .await;
    assert_error(s, &v, 400, "truncated JSON");
    let (s, v) = srv.post_raw("/v1/completions", b"not json".to_vec()).await;
    assert_error(s, &v, 400, "not JSON");
    let big = serde_json::to_vec(&json!({"model": LLAMA, "prompt": "a".repeat(70 << 10)})).unwrap();
    let (s, v) = srv.post_raw("/v1/completions", big).await;
    assert_error(s, &v, 413, "body over the limit");
    let (s, v) = srv.post("/v1/nothing", &json!({})).await;
    assert_error(s, &v, 404, "unknown route");
    let (s, v) = srv.get("/v1/chat/completions").await;
    assert_error(s, &v, 405, "GET on a POST route");

    // After all that the server still answers, and nothing is left in the KV caches.
    let (s, v) = srv
        .post("/v1/chat/completions", &chat_body(QWEN, 1, false))
        .await;
    assert_eq!(s, 200, "{v}");
    let st = srv.engine().await;
    assert!(
        st.models
            .iter()
            .all(|m| m.live_sequences == 0 && m.leaked_blocks == 0),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_set_and_models_without_a_pool_refuse_cord() {
    let fx = Fixture::new();
    let models = Models::from_specs(
        &[
            ("tiny".to_string(), fx.llama.display().to_string()),
            ("tiny2".to_string(), fx.qwen2.display().to_string()),
        ],
        &cord_runtime::engine::ModelOptions {
            kv_memory: common::KV_BYTES,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(models.names(), ["tiny", "tiny2"]);
    let srv = Running::start(
        models,
        ServeConfig {
            api_key: Some("sekrit".into()),
            ..config()
        },
    );
    let body = json!({"model": "tiny", "prompt": "hi", "max_tokens": 3});
    let r = srv
        .http
        .post(srv.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let r = srv
        .http
        .get(srv.url("/v1/models"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = srv
        .http
        .post(srv.url("/v1/completions"))
        .bearer_auth("sekrit")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // /health needs no key.
    let (s, _) = srv.get("/health").await;
    assert_eq!(s, 200);
    let r = srv
        .http
        .post(srv.url("/v1/cord"))
        .bearer_auth("sekrit")
        .json(&json!({"question": "q", "answer": "1"}))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_error(s, &v, 400, "cord without a pool");
    assert!(v["error"]["message"].as_str().unwrap().contains("--pool"));

    // Two models under one name are refused before serving.
    let dup = Models::from_specs(
        &[
            ("same".to_string(), fx.llama.display().to_string()),
            ("same".to_string(), fx.qwen2.display().to_string()),
        ],
        &Default::default(),
    );
    assert!(
        dup.err()
            .unwrap()
            .to_string()
            .contains("two models are named `same`")
    );
}

/// Shutdown while a stream is in flight: the stream finishes ([DONE]), new connections are
/// refused, and `shutdown` returns once the engine worker has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_requests_in_flight() {
    let fx = Fixture::new();
    let mut srv = fx.serve(config());
    let http = srv.http.clone();
    let url = srv.url("/v1/completions");
    let body = json!({"model": LLAMA, "prompt": "Once", "max_tokens": 64, "temperature": 1.0, "seed": 4, "stream": true});
    let resp = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let server = Arc::new(std::sync::Mutex::new(srv.server.take()));
    let stopper = {
        let server = server.clone();
        std::thread::spawn(move || server.lock().unwrap().take().unwrap().shutdown())
    };
    let text = resp.text().await.unwrap();
    let events = common::parse_sse(&text);
    assert_eq!(events.last().unwrap().1, "[DONE]", "{text}");
    stopper.join().unwrap().unwrap();
    assert!(http.post(&url).json(&body).send().await.is_err());
}

/// A client that goes away mid-stream is cancelled: its sequence leaves the scheduler at once
/// (long before its 2000 tokens) and its KV blocks go back to the pool or the prefix cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_stream_is_cancelled_and_frees_its_sequence() {
    let fx = Fixture::new();
    let srv = fx.serve(ServeConfig {
        max_tokens: 2000,
        ..config()
    });
    // Seed 5: the tiny model writes 842 tokens before its EOS when left alone (seed 1, used
    // before, stopped by itself after 21, so under load the stream could end before the
    // disconnect was seen and nothing was cancelled).
    let body = json!({"model": LLAMA, "prompt": "Go on:", "max_tokens": 2000, "temperature": 1.0, "seed": 5, "stream": true});
    let mut resp = srv
        .http
        .post(srv.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);
    let mut st = srv.engine().await;
    for _ in 0..400 {
        if st.live_requests == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        st = srv.engine().await;
    }
    assert_eq!(st.live_requests, 0, "{st:?}");
    assert_eq!(st.cancelled, 1, "{st:?}");
    let m = &st.models[0];
    assert_eq!((m.live_sequences, m.leaked_blocks), (0, 0), "{m:?}");
    assert!(
        m.generated_tokens < 842,
        "the request ran to its end: {m:?}"
    );
}
