//! The engine end to end on a tiny random-weight model and a hand-built tokenizer: batching and
//! chunked prefill do not change sampled outputs, the prefix cache is reused, KV pool exhaustion
//! preempts instead of failing, stop strings across token boundaries, and scoring against a plain
//! full forward.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{D, DType, Device};
use cord_kv::KvCache;
use cord_models::{LoadedModel, LogitsMode, Model, ModelConfig, SeqInput};
use cord_runtime::SamplingParams;
use cord_runtime::engine::{
    DeviceSpec, Engine, Event, Finish, GenOutput, GenRequest, ModelId, ModelOptions, RequestId,
    TokenScoreRequest,
};
use serde_json::json;
use tokenizers::Tokenizer;

const VOCAB: usize = 128;
const BLOCK: usize = 4;

fn config() -> ModelConfig {
    let v = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "vocab_size": VOCAB,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2
    });
    ModelConfig::from_hf_json(&v, "tiny test config").unwrap()
}

/// A SentencePiece-style word-level tokenizer: ids 0 `<unk>`, 1 `<s>`, 2 `</s>`, then the words
/// `▁w3` .. `▁w127`. Text is space-separated words `w3 w17 …`; decoding turns `▁` back into spaces.
fn tokenizer() -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    for (i, s) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
    }
    for i in 3..VOCAB {
        vocab.insert(format!("▁w{i}"), json!(i));
    }
    let added = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    let meta =
        json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
    let cfg = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
        "normalizer": null, "pre_tokenizer": meta, "post_processor": null, "decoder": meta,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    cfg.to_string().parse().unwrap()
}

fn loaded(seed: u64) -> Arc<LoadedModel> {
    let cfg = config();
    let model = Model::random(&cfg, DType::F32, &Device::Cpu, seed).unwrap();
    let tokenizer = tokenizer();
    assert_eq!(tokenizer.get_vocab_size(true), cfg.vocab_size);
    Arc::new(LoadedModel {
        model,
        tokenizer,
        chat_template: None,
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        eos_token_ids: vec![2],
        add_bos: true,
        name: "tiny".into(),
    })
}

fn opts(kv_memory: u64, max_batch_tokens: usize) -> ModelOptions {
    ModelOptions {
        kv_memory,
        block_size: BLOCK,
        max_batch_tokens,
        ..ModelOptions::default()
    }
}

fn engine_with(model: &Arc<LoadedModel>, o: &ModelOptions) -> (Engine, ModelId) {
    let mut e = Engine::new();
    let id = e.add_loaded("tiny", model.clone(), o).unwrap();
    (e, id)
}

/// `n` words of deterministic pseudo-random vocabulary (`w3` .. `w127`).
fn prompt(seed: u64, n: usize) -> String {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            format!("w{}", 3 + s % (VOCAB as u64 - 3))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn sampled() -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        ..SamplingParams::default()
    }
}

fn req(prompt: String, params: SamplingParams, seed: u64, max_new_tokens: usize) -> GenRequest {
    GenRequest {
        prompt,
        params,
        seed,
        max_new_tokens,
        stop: vec![],
        keep_stop: false,
    }
}

/// Nine requests of different prompt lengths (3..=27 words), sampled, each with its own seed.
fn mixed_requests(max_new_tokens: usize) -> Vec<GenRequest> {
    (0..9u64)
        .map(|i| {
            req(
                prompt(100 + i, 3 + 3 * i as usize),
                sampled(),
                7 + i,
                max_new_tokens,
            )
        })
        .collect()
}

fn same_outputs(a: &[GenOutput], b: &[GenOutput], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: number of outputs");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.text, y.text, "{what}: text of request {i}");
        assert_eq!(x.token_ids, y.token_ids, "{what}: tokens of request {i}");
        assert_eq!(x.finish, y.finish, "{what}: finish of request {i}");
        assert_eq!(
            x.prompt_tokens, y.prompt_tokens,
            "{what}: prompt of request {i}"
        );
    }
}

/// The outputs are real sampled text: not empty and not all the same.
fn assert_varied(outs: &[GenOutput]) {
    assert!(outs.iter().all(|o| o.completion_tokens > 0));
    let first = &outs[0].token_ids;
    assert!(
        outs.iter().any(|o| &o.token_ids != first),
        "every request produced the same tokens: {first:?}"
    );
}

#[test]
fn sampled_output_is_the_same_alone_and_inside_a_batch() {
    let model = loaded(1);
    let reqs = mixed_requests(24);
    let target = 4;

    let (mut e, id) = engine_with(&model, &opts(1 << 22, 1024));
    let alone = e.generate(id, &reqs[target..=target]).unwrap();

    let (mut e, id) = engine_with(&model, &opts(1 << 22, 1024));
    let batch = e.generate(id, &reqs).unwrap();
    assert_varied(&batch);
    same_outputs(&alone, &batch[target..=target], "alone vs batch of 9");
    assert!(e.model(id).unwrap().stats().forward_calls >= 24);

    // The seed matters: the same prompt with another seed samples something else.
    let mut other = reqs[target].clone();
    other.seed += 1000;
    let (mut e, id) = engine_with(&model, &opts(1 << 22, 1024));
    let reseeded = e.generate(id, &[other]).unwrap();
    assert_ne!(reseeded[0].token_ids, alone[0].token_ids);
}

#[test]
fn chunked_prefill_gives_the_same_outputs() {
    let model = loaded(2);
    let reqs = mixed_requests(16);

    let (mut e, id) = engine_with(&model, &opts(1 << 22, 4096));
    let big = e.generate(id, &reqs).unwrap();
    assert_varied(&big);

    let (mut e, id) = engine_with(&model, &opts(1 << 22, 5));
    let small = e.generate(id, &reqs).unwrap();
    same_outputs(&big, &small, "max_batch_tokens 4096 vs 5");
    // Small budget: prompts of up to 28 tokens took several forwards each.
    let calls_small = e.model(id).unwrap().stats().forward_calls;
    assert!(calls_small > 16 + 20, "forward calls {calls_small}");
}

#[test]
fn prefix_cache_is_reused_across_generate_calls() {
    let model = loaded(3);
    let (mut e, id) = engine_with(&model, &opts(1 << 22, 1024));
    let r = req(prompt(42, 21), sampled(), 5, 12);
    let first = e.generate(id, std::slice::from_ref(&r)).unwrap();
    assert_eq!(first[0].reused_tokens, 0);
    assert_eq!(first[0].prompt_tokens, 22, "21 words + BOS");
    let second = e.generate(id, std::slice::from_ref(&r)).unwrap();
    assert!(
        second[0].reused_tokens > 0,
        "second call reused nothing: {:?}",
        second[0]
    );
    assert!(second[0].reused_tokens < second[0].prompt_tokens);
    same_outputs(&first, &second, "first vs cached");
    let stats = e.model(id).unwrap().stats();
    assert_eq!(stats.reused_tokens, second[0].reused_tokens as u64);
    assert_eq!(stats.prompt_tokens, 44);
}

#[test]
fn kv_pool_exhaustion_preempts_and_gives_the_same_results() {
    let model = loaded(4);
    let reqs = mixed_requests(40);
    let per_block = model.model.kv_config(1, BLOCK).bytes_per_block() as u64;
    // Working set: 9 sequences of up to 28 + 40 tokens = up to 17 blocks each.
    let working_blocks: usize = reqs
        .iter()
        .map(|r| (r.prompt.split(' ').count() + 1 + r.max_new_tokens).div_ceil(BLOCK))
        .sum();
    let small_blocks = 24;
    assert!(working_blocks >= 4 * small_blocks, "{working_blocks}");

    let (mut e, id) = engine_with(&model, &opts(per_block * 100_000, 1024));
    let big = e.generate(id, &reqs).unwrap();
    assert_varied(&big);
    assert_eq!(e.model(id).unwrap().stats().preemptions, 0);

    let (mut e, id) = engine_with(&model, &opts(per_block * small_blocks as u64, 1024));
    assert_eq!(e.model(id).unwrap().kv().num_blocks(), small_blocks);
    // On a worker thread with a deadline: a scheduler that keeps re-admitting the sequence it
    // just preempted never finishes, and that must fail the test rather than hang it.
    let (tx, rx) = std::sync::mpsc::channel();
    let reqs2 = reqs.clone();
    std::thread::spawn(move || {
        let out = e.generate(id, &reqs2);
        let _ = tx.send((e, out));
    });
    let (mut e, small) = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("generate with a small KV pool did not finish within 120 s (livelock?)");
    let small = small.unwrap();
    same_outputs(&big, &small, "large pool vs small pool");
    let preemptions = e.model(id).unwrap().stats().preemptions;
    eprintln!("{working_blocks} blocks of work, pool {small_blocks}: {preemptions} preemptions");
    assert!(
        preemptions > 0,
        "no preemption with a pool of {small_blocks} blocks"
    );
    // The engine is still usable afterwards.
    let again = e.generate(id, &reqs[..2]).unwrap();
    same_outputs(&big[..2], &again, "after preemption");
}

#[test]
fn stop_string_across_token_boundaries() {
    let model = loaded(5);
    let (mut e, id) = engine_with(&model, &opts(1 << 22, 1024));
    let base = req(prompt(9, 6), SamplingParams::greedy(), 0, 12);
    let full = e
        .generate(id, std::slice::from_ref(&base))
        .unwrap()
        .remove(0);
    assert_eq!(full.finish, Finish::Length, "{full:?}");
    assert_eq!(full.token_ids.len(), 12);
    // Every generated token decodes to " wN". The stop string runs from the digits of token j
    // over " w" to the first digit of token j + 1 ("17 w4"), for the first j where it does not
    // already occur earlier in the text.
    let tok = &model.tokenizer;
    let piece = |t: u32| format!(" {}", tok.id_to_token(t).unwrap().trim_start_matches('▁'));
    let pieces: Vec<String> = full.token_ids.iter().map(|&t| piece(t)).collect();
    assert_eq!(full.text, pieces.concat());
    let starts: Vec<usize> = (0..pieces.len())
        .map(|j| pieces[..j].iter().map(String::len).sum())
        .collect();
    let (j, stop) = (1..pieces.len() - 1)
        .map(|j| (j, full.text[starts[j] + 2..starts[j + 1] + 3].to_string()))
        .find(|(j, stop)| full.text.find(stop.as_str()) == Some(starts[*j] + 2))
        .unwrap_or_else(|| panic!("no usable stop string in {:?}", full.text));
    assert!(j <= 8, "greedy text too repetitive: {:?}", full.text);
    let (cut_before, cut_after) = (starts[j] + 2, starts[j + 1] + 3);
    eprintln!(
        "greedy text {:?}; stop string {stop:?} spans tokens {j} and {}",
        full.text,
        j + 1
    );

    for keep in [false, true] {
        let mut r = base.clone();
        r.stop = vec![stop.clone()];
        r.keep_stop = keep;
        // Fresh engine (no prefix cache) and through the cache: both must stop the same way.
        for fresh in [true, false] {
            let out = if fresh {
                let (mut e2, id2) = engine_with(&model, &opts(1 << 22, 1024));
                e2.generate(id2, std::slice::from_ref(&r))
                    .unwrap()
                    .remove(0)
            } else {
                e.generate(id, std::slice::from_ref(&r)).unwrap().remove(0)
            };
            assert_eq!(out.finish, Finish::Stop(stop.clone()), "keep {keep}");
            assert_eq!(
                out.completion_tokens,
                j + 2,
                "generation ends on token j + 1"
            );
            if keep {
                assert_eq!(out.text, full.text[..cut_after], "keep_stop=true");
                assert!(out.text.ends_with(&stop));
                assert_eq!(out.token_ids, full.token_ids[..j + 2]);
            } else {
                assert_eq!(out.text, full.text[..cut_before], "keep_stop=false");
                assert!(!out.text.contains(&stop));
                assert_eq!(out.token_ids, full.token_ids[..j]);
            }
        }
    }

    // Streaming delivers exactly the final text.
    let mut r = base.clone();
    r.stop = vec![stop.clone()];
    let mut streamed = String::new();
    let out = e
        .generate_streaming(id, std::slice::from_ref(&r), &mut |i, t| {
            assert_eq!(i, 0);
            streamed.push_str(t);
        })
        .unwrap()
        .remove(0);
    assert_eq!(streamed, out.text);
}

/// Log-probs of `ids[from..]` from one full forward of `ids` on a fresh cache.
fn reference_logprobs(model: &Model, ids: &[u32], from: usize) -> Vec<f32> {
    let mut kv = KvCache::new(model.kv_config(ids.len().div_ceil(BLOCK), BLOCK)).unwrap();
    let seq = kv.new_sequence();
    let logits = model
        .forward(&[SeqInput::new(seq, ids, LogitsMode::All)], &mut kv)
        .unwrap();
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    (from..ids.len())
        .map(|i| lp[i - 1][ids[i] as usize])
        .collect()
}

#[test]
fn score_matches_a_full_forward_and_reuses_the_context() {
    let model = loaded(6);
    let (mut e, id) = engine_with(&model, &opts(1 << 22, 1024));
    let (c1, c2, c3) = (prompt(11, 13), prompt(12, 9), prompt(13, 20));
    let reqs: Vec<TokenScoreRequest> = [
        (&c1, prompt(21, 4)),
        (&c1, prompt(22, 7)),
        (&c2, prompt(23, 1)),
        (&c3, prompt(24, 5)),
    ]
    .into_iter()
    .map(|(c, x)| TokenScoreRequest {
        context: c.clone(),
        continuation: format!(" {x}"),
    })
    .collect();

    let first = e.score(id, &reqs).unwrap();
    let mut expected_total = 0;
    for (r, out) in reqs.iter().zip(&first) {
        let ctx: Vec<u32> = model
            .tokenizer
            .encode(r.context.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        let cont: Vec<u32> = model
            .tokenizer
            .encode(r.continuation.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        let mut ids = vec![1u32];
        ids.extend(&ctx);
        ids.extend(&cont);
        assert_eq!(out.context_tokens, 1 + ctx.len());
        assert_eq!(out.token_ids, cont);
        let want = reference_logprobs(&model.model, &ids, 1 + ctx.len());
        assert_eq!(out.logprobs.len(), want.len());
        for (k, (g, w)) in out.logprobs.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4,
                "{:?}: token {k}: engine {g} vs reference {w}",
                r.continuation
            );
        }
        assert!(out.logprobs.iter().all(|&l| l < 0.0));
        expected_total += cont.len();
    }
    assert_eq!(
        e.model(id).unwrap().stats().scored_tokens,
        expected_total as u64
    );

    let second = e.score(id, &reqs).unwrap();
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
        eprintln!(
            "score {i}: {} context tokens, {} reused; log-probs {:?} then {:?}",
            b.context_tokens, b.reused_tokens, a.logprobs, b.logprobs
        );
        assert!(
            b.reused_tokens > 0,
            "request {i}: context not reused: {b:?}"
        );
        assert!(b.reused_tokens < b.context_tokens);
        assert_eq!(a.token_ids, b.token_ids);
        for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
            assert!(
                (x - y).abs() <= 1e-5,
                "request {i}: first {x} vs cached {y}"
            );
        }
    }
}

/// `score_top` lists, per continuation token, the k most likely tokens of a full forward's
/// log-softmax row, largest first, with the same log-probs as `score`.
#[test]
fn score_top_lists_the_most_likely_tokens_of_each_position() {
    let model = loaded(7);
    let (mut e, id) = engine_with(&model, &opts(1 << 22, 1024));
    let req = TokenScoreRequest {
        context: prompt(31, 11),
        continuation: format!(" {}", prompt(32, 5)),
    };
    let plain = e.score(id, std::slice::from_ref(&req)).unwrap().remove(0);
    assert!(plain.top_logprobs.is_empty());
    let out = e
        .score_top(id, std::slice::from_ref(&req), 3)
        .unwrap()
        .remove(0);
    assert_eq!(out.token_ids, plain.token_ids);
    assert_eq!(out.top_logprobs.len(), out.token_ids.len());
    let ctx = model
        .tokenizer
        .encode(req.context.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    let mut ids = vec![1u32];
    ids.extend(&ctx);
    ids.extend(&out.token_ids);
    let mut kv = KvCache::new(model.model.kv_config(ids.len().div_ceil(BLOCK), BLOCK)).unwrap();
    let seq = kv.new_sequence();
    let logits = model
        .model
        .forward(&[SeqInput::new(seq, &ids, LogitsMode::All)], &mut kv)
        .unwrap();
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (k, top) in out.top_logprobs.iter().enumerate() {
        let row = &lp[1 + ctx.len() + k - 1];
        let mut want: Vec<(u32, f32)> = row
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        assert_eq!(top.len(), 3);
        for ((gi, gl), (wi, wl)) in top.iter().zip(&want) {
            assert_eq!(gi, wi, "position {k}: {top:?} vs {:?}", &want[..3]);
            assert!((gl - wl).abs() <= 1e-4, "position {k}: {gl} vs {wl}");
        }
        assert!(top[0].1 >= out.logprobs[k] - 1e-5);
    }
}

/// Weights + KV pools must fit the device budget; the refusal names the numbers and what is
/// already placed, and leaves the engine unchanged.
#[test]
fn models_that_do_not_fit_the_device_budget_are_refused() {
    let m = loaded(1);
    let weights = m.model.config().num_parameters() as u64 * 4;
    let o = opts(1 << 20, 64);
    let mut e = Engine::new();
    e.set_memory_budget(DeviceSpec::Cpu, weights + (1 << 20) + weights / 2);
    e.add_loaded("a", m.clone(), &o).unwrap();
    let err = e.add_loaded("b", m.clone(), &o).unwrap_err().to_string();
    for part in [
        "model `b` does not fit on cpu",
        "KV pool 0.00 GiB",
        "budget (set explicitly) is left",
        "already placed: `a`",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert_eq!(e.memory(DeviceSpec::Cpu).unwrap().placed.len(), 1);
    assert!(e.set_gpu_memory_fraction(0.0).is_err());
    assert!(e.set_gpu_memory_fraction(1.5).is_err());
    // A larger budget takes the second model.
    e.set_memory_budget(DeviceSpec::Cpu, 3 * (weights + (1 << 20)));
    e.add_loaded("b", m, &o).unwrap();
    assert_eq!(e.memory(DeviceSpec::Cpu).unwrap().placed.len(), 2);
}

/// Steps `id`'s scheduler until it is idle; the outputs of the requests that finished, by id.
fn step_until_idle(e: &mut Engine, id: ModelId) -> BTreeMap<RequestId, GenOutput> {
    let mut done = BTreeMap::new();
    let mut s = e.scheduler(id).unwrap();
    for _ in 0..10_000 {
        if s.is_idle() {
            return done;
        }
        for ev in s.step().unwrap() {
            if let Event::Finished { id, output } = ev {
                assert!(done.insert(id, output).is_none(), "{id:?} finished twice");
            }
        }
    }
    panic!("the scheduler did not become idle");
}

/// The scheduler's state once idle: nothing live, no KV sequence, every block either free or
/// in the prefix cache, and all free once the prefix cache is dropped.
fn assert_no_leak(e: &mut Engine, id: ModelId) {
    let st = e.scheduler(id).unwrap().stats();
    assert_eq!(st.live, 0, "{st:?}");
    assert_eq!(st.kv_sequences, 0, "{st:?}");
    assert_eq!(st.free_blocks + st.cached_blocks, st.total_blocks, "{st:?}");
    e.model_mut(id).unwrap().clear_prefix_cache();
    let st = e.scheduler(id).unwrap().stats();
    assert_eq!(st.free_blocks, st.total_blocks, "{st:?}");
}

#[test]
fn a_request_added_mid_flight_samples_what_it_samples_alone() {
    let model = loaded(8);
    let reqs = mixed_requests(20);
    let (first, late) = (&reqs[6], &reqs[2]);

    let (mut e, id) = engine_with(&model, &opts(1 << 22, 1024));
    let alone = e
        .generate(id, &[first.clone(), late.clone()])
        .unwrap()
        .into_iter()
        .map(|o| e_output(&o))
        .collect::<Vec<_>>();

    // `first` decodes for a few steps before `late` arrives; a chunk budget of 8 tokens makes
    // `late`'s prefill run in pieces beside `first`'s decode.
    let (mut e, id) = engine_with(&model, &opts(1 << 22, 8));
    let mut s = e.scheduler(id).unwrap();
    let a = s.add(first).unwrap();
    let mut text_a = String::new();
    for _ in 0..8 {
        for ev in s.step().unwrap() {
            match ev {
                Event::Text { id, text } if id == a => text_a.push_str(&text),
                other => panic!("unexpected event {other:?}"),
            }
        }
    }
    assert!(!text_a.is_empty(), "first request produced no text yet");
    let b = s.add(late).unwrap();
    assert!(b > a);
    assert_eq!(s.stats().live, 2);
    let done = step_until_idle(&mut e, id);
    assert_eq!(done.len(), 2);
    assert_eq!(e_output(&done[&a]), alone[0], "request decoding before");
    assert_eq!(e_output(&done[&b]), alone[1], "request added mid-flight");
    assert!(done[&a].text.starts_with(&text_a));
    assert_no_leak(&mut e, id);
}

/// What must not depend on the batch: text, tokens, finish.
fn e_output(o: &GenOutput) -> (String, Vec<u32>, Finish) {
    (o.text.clone(), o.token_ids.clone(), o.finish.clone())
}

#[test]
fn cancel_frees_the_sequence_at_once() {
    let model = loaded(9);
    let reqs = mixed_requests(30);
    let (mut e, id) = engine_with(&model, &opts(1 << 22, 1024));
    let total = e.model(id).unwrap().kv().num_blocks();
    let mut s = e.scheduler(id).unwrap();
    let a = s.add(&reqs[8]).unwrap();
    let b = s.add(&reqs[3]).unwrap();
    for _ in 0..5 {
        s.step().unwrap();
    }
    let held = s.stats();
    assert_eq!((held.live, held.kv_sequences), (2, 2), "{held:?}");
    assert!(s.cancel(a).unwrap());
    let after = s.stats();
    assert_eq!((after.live, after.kv_sequences), (1, 1), "{after:?}");
    assert!(
        after.free_blocks + after.cached_blocks > held.free_blocks + held.cached_blocks
            || after.free_blocks > held.free_blocks,
        "cancel freed nothing: {held:?} -> {after:?}"
    );
    // Cancelled twice, or an id that never was: nothing to do.
    assert!(!s.cancel(a).unwrap());
    assert!(!s.cancel(RequestId(999)).unwrap());
    let done = step_until_idle(&mut e, id);
    assert_eq!(done.keys().copied().collect::<Vec<_>>(), vec![b]);
    assert_eq!(done[&b].completion_tokens, 30);
    assert_eq!(e.model(id).unwrap().kv().num_blocks(), total);
    assert_no_leak(&mut e, id);
    // The model serves the same as before after a cancel.
    let (mut fresh, fid) = engine_with(&model, &opts(1 << 22, 1024));
    let want = fresh.generate(fid, &reqs[3..4]).unwrap();
    same_outputs(&want, &[done[&b].clone()], "after a cancel vs fresh");
}
