//! Incremental detokenization and stop detection against small hand-built tokenizers: a
//! SentencePiece-style one (byte fallback, `▁` spaces, leading-space strip) and a GPT-2 style
//! byte-level one.

use cord_runtime::stop::{Finish, StopChecker, StopConfig, StopError};
use proptest::prelude::*;
use serde_json::json;
use tokenizers::Tokenizer;

const WORDS: &[&str] = &[
    "▁The",
    "▁answer",
    "▁is",
    "▁4",
    ".\n#",
    "##",
    "#",
    "▁St",
    "ep",
    "▁2",
    "</",
    "think",
    ">",
    "▁x",
    "▁world",
    "a",
    "b",
    "ab",
    "▁a",
    "\n",
    ".",
    "▁€",
    "▁",
];

struct Sp {
    tok: Tokenizer,
}

impl Sp {
    /// ids: 0 <unk>, 1 <s>, 2 </s>, 3..=258 the byte tokens, then WORDS, then `</think>` (an added,
    /// non-special token).
    fn new() -> Self {
        let mut vocab = serde_json::Map::new();
        for (i, s) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
            vocab.insert(s.to_string(), json!(i));
        }
        for b in 0..256u32 {
            vocab.insert(format!("<0x{b:02X}>"), json!(3 + b));
        }
        for (i, w) in WORDS.iter().enumerate() {
            vocab.insert(w.to_string(), json!(259 + i));
        }
        let think_id = 259 + WORDS.len();
        vocab.insert("</think>".into(), json!(think_id));
        let added = |id: usize, content: &str, special: bool| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": special})
        };
        let cfg = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [added(0, "<unk>", true), added(1, "<s>", true), added(2, "</s>", true),
                             added(think_id, "</think>", false)],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        });
        Self {
            tok: cfg.to_string().parse().unwrap(),
        }
    }

    fn id(&self, s: &str) -> u32 {
        if let Some(hex) = s.strip_prefix("0x") {
            return 3 + u32::from_str_radix(hex, 16).unwrap();
        }
        self.tok
            .token_to_id(s)
            .unwrap_or_else(|| panic!("no token {s:?}"))
    }

    fn ids(&self, toks: &[&str]) -> Vec<u32> {
        toks.iter().map(|t| self.id(t)).collect()
    }
}

fn cfg(stops: &[&str]) -> StopConfig {
    StopConfig {
        eos_token_ids: vec![2],
        stop_strings: stops.iter().map(|s| s.to_string()).collect(),
        ..StopConfig::default()
    }
}

/// Pushes all ids; returns (concatenated deltas, the finished record if any).
fn run(
    tok: &Tokenizer,
    c: &mut StopChecker,
    ids: &[u32],
) -> (String, Option<cord_runtime::stop::Finished>) {
    let mut out = String::new();
    for &id in ids {
        let step = c.push(tok, id).unwrap();
        out.push_str(&step.delta);
        if step.finished.is_some() {
            return (out, step.finished);
        }
    }
    (out, None)
}

#[test]
fn partial_utf8_is_held_back_until_complete() {
    let sp = Sp::new();
    let mut c = StopChecker::new(cfg(&[]));
    let deltas: Vec<String> = sp
        .ids(&["▁x", "0xE2", "0x82", "0xAC", "▁world"])
        .iter()
        .map(|&i| c.push(&sp.tok, i).unwrap().delta)
        .collect();
    assert_eq!(deltas, ["x", "", "", "€", " world"]);
    assert_eq!(c.text(), "x€ world");
    // A 4-byte character.
    let mut c = StopChecker::new(cfg(&[]));
    let (out, fin) = run(
        &sp.tok,
        &mut c,
        &sp.ids(&["0xF0", "0x9F", "0x98", "0x80", "a"]),
    );
    assert_eq!((out.as_str(), fin), ("😀a", None));
}

#[test]
fn stop_string_spanning_tokens_and_starting_mid_token() {
    let sp = Sp::new();
    let ids = sp.ids(&[
        "▁The",
        "▁answer",
        "▁is",
        "▁4",
        ".\n#",
        "##",
        "▁St",
        "ep",
        "▁2",
    ]);
    let mut c = StopChecker::new(cfg(&["### Step"]));
    let mut deltas = Vec::new();
    let mut fin = None;
    for &id in &ids {
        let s = c.push(&sp.tok, id).unwrap();
        deltas.push(s.delta);
        if s.finished.is_some() {
            fin = s.finished;
            break;
        }
    }
    // "#" after ".\n" could start the stop string: held back, never shown.
    assert_eq!(deltas, ["The", " answer", " is", " 4", ".\n", "", "", ""]);
    let fin = fin.expect("stopped");
    assert_eq!(fin.reason, Finish::Stop("### Step".into()));
    assert_eq!(fin.text, "The answer is 4.\n");
    let m = fin.stop_match.clone().unwrap();
    assert_eq!((m.start, m.end), (17, 25));
    // Tokens "The", " answer", " is", " 4" lie before the match; ".\n#" holds its first byte.
    assert_eq!((m.tokens_before, m.tokens_through), (4, 8));
    assert_eq!((fin.num_tokens, fin.tokens_to_keep), (8, 4));
    assert!(c.is_finished());
    assert_eq!(c.push(&sp.tok, ids[8]), Err(StopError::AlreadyFinished));

    // The same with the stop string kept.
    let mut c = StopChecker::new(StopConfig {
        include_stop_string: true,
        ..cfg(&["### Step"])
    });
    let (out, fin) = run(&sp.tok, &mut c, &ids);
    let fin = fin.unwrap();
    assert_eq!(out, "The answer is 4.\n### Step");
    assert_eq!(fin.text, out);
    assert_eq!(fin.tokens_to_keep, 8);
}

#[test]
fn stop_string_ending_mid_token_cuts_the_text() {
    let sp = Sp::new();
    // "ab" then "ab": stop "ba" starts in the first token's last byte, ends in the second's first.
    let mut c = StopChecker::new(StopConfig {
        include_stop_string: true,
        ..cfg(&["ba"])
    });
    let (out, fin) = run(&sp.tok, &mut c, &sp.ids(&["▁x", "ab", "ab", "▁2"]));
    let fin = fin.unwrap();
    assert_eq!(out, "xaba");
    assert_eq!(fin.text, "xaba");
    let m = fin.stop_match.unwrap();
    assert_eq!(
        (m.start, m.end, m.tokens_before, m.tokens_through),
        (2, 4, 1, 3)
    );
    assert_eq!(c.text(), "xabab");
}

#[test]
fn a_held_prefix_is_released_when_it_cannot_match() {
    let sp = Sp::new();
    let mut c = StopChecker::new(cfg(&["### Step"]));
    let d: Vec<String> = sp
        .ids(&["▁4", "#", "##", "▁x"])
        .iter()
        .map(|&i| c.push(&sp.tok, i).unwrap().delta)
        .collect();
    assert_eq!(d, ["4", "", "", "### x"]);
}

#[test]
fn think_close_as_one_added_token_or_as_pieces() {
    let sp = Sp::new();
    for toks in [
        &["▁x", "</think>", "▁2"][..],
        &["▁x", "</", "think", ">", "▁2"][..],
    ] {
        let mut c = StopChecker::new(cfg(&["</think>"]));
        let (out, fin) = run(&sp.tok, &mut c, &sp.ids(toks));
        let fin = fin.unwrap_or_else(|| panic!("{toks:?}"));
        assert_eq!(fin.reason, Finish::Stop("</think>".into()));
        assert_eq!((out.as_str(), fin.text.as_str()), ("x", "x"));
        let m = fin.stop_match.unwrap();
        assert_eq!((m.tokens_before, m.tokens_through), (1, toks.len() - 1));
    }
}

#[test]
fn eos_and_length() {
    let sp = Sp::new();
    let mut c = StopChecker::new(cfg(&["###"]));
    let (out, fin) = run(
        &sp.tok,
        &mut c,
        &[sp.id("▁The"), sp.id("#"), 2, sp.id("▁x")],
    );
    let fin = fin.unwrap();
    assert_eq!(fin.reason, Finish::Eos);
    assert_eq!((out.as_str(), fin.text.as_str()), ("The#", "The#"));
    assert_eq!((fin.num_tokens, fin.tokens_to_keep), (3, 3));
    assert!(fin.stop_match.is_none());

    let mut c = StopChecker::new(StopConfig {
        max_new_tokens: 3,
        ..cfg(&["###"])
    });
    let (out, fin) = run(&sp.tok, &mut c, &sp.ids(&["▁The", "▁answer", "#", "▁x"]));
    let fin = fin.unwrap();
    assert_eq!(fin.reason, Finish::Length);
    // The held-back "#" is flushed at the end.
    assert_eq!(
        (out.as_str(), fin.text.as_str(), fin.num_tokens),
        ("The answer#", "The answer#", 3)
    );

    // An incomplete character at the end is decoded lossily, like a full decode.
    let mut c = StopChecker::new(StopConfig {
        max_new_tokens: 3,
        ..cfg(&[])
    });
    let ids = sp.ids(&["▁x", "0xE2", "0x82"]);
    let (out, fin) = run(&sp.tok, &mut c, &ids);
    assert_eq!(fin.unwrap().reason, Finish::Length);
    assert_eq!(out, sp.tok.decode(&ids, true).unwrap());
    assert!(out.starts_with('x') && out.ends_with('\u{FFFD}'));
}

#[test]
fn special_tokens_skipped_and_context_keeps_leading_spaces() {
    let sp = Sp::new();
    let mut c = StopChecker::new(cfg(&[]));
    let (out, _) = run(&sp.tok, &mut c, &sp.ids(&["▁x", "<s>", "▁world"]));
    assert_eq!(out, "x world");
    let mut c = StopChecker::new(StopConfig {
        skip_special_tokens: false,
        ..cfg(&[])
    });
    let (out, _) = run(&sp.tok, &mut c, &sp.ids(&["▁x", "<s>", "▁world"]));
    assert_eq!(out, "x<s> world");
    // Without context the first token's leading space is stripped (as in a full decode); with the
    // prompt's last tokens as context it is kept.
    let mut c = StopChecker::new(cfg(&[]));
    assert_eq!(run(&sp.tok, &mut c, &sp.ids(&["▁world"])).0, "world");
    let mut c = StopChecker::with_context(cfg(&[]), &sp.ids(&["▁The", "▁answer"]));
    let (out, _) = run(&sp.tok, &mut c, &sp.ids(&["▁world", "▁is"]));
    assert_eq!(out, " world is");
    assert_eq!(c.text(), " world is");
}

#[test]
fn earliest_match_wins_and_empty_stop_strings_are_ignored() {
    let sp = Sp::new();
    let mut c = StopChecker::new(cfg(&["", "b a", "ab"]));
    let (_, fin) = run(&sp.tok, &mut c, &sp.ids(&["▁x", "a", "b", "▁a", "▁2"]));
    let fin = fin.unwrap();
    assert_eq!(fin.reason, Finish::Stop("ab".into()));
    assert_eq!(fin.text, "x");
}

/// GPT-2 byte-to-unicode table.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

#[test]
fn byte_level_decoder_partial_characters() {
    let t = byte_chars();
    let enc = |s: &[u8]| s.iter().map(|&b| t[b as usize]).collect::<String>();
    let words: Vec<String> = vec![
        enc(b"Hello"),
        enc(b" world"),
        enc(&[0xE2]),
        enc(&[0x82]),
        enc(&[0xAC, b'!']),
        enc(b" ###"),
        enc(b" Step"),
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), json!(i)))
        .collect();
    let tok: Tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "Hello"}
    })
    .to_string()
    .parse()
    .unwrap();
    let mut c = StopChecker::new(StopConfig {
        stop_strings: vec!["€! ###".into()],
        ..StopConfig::default()
    });
    let d: Vec<String> = [0u32, 2, 3, 4, 1]
        .iter()
        .map(|&i| c.push(&tok, i).unwrap().delta)
        .collect();
    // "€!" is held back too: it could start the stop string.
    assert_eq!(d, ["Hello", "", "", "", "€! world"]);
    let mut c = StopChecker::new(StopConfig {
        stop_strings: vec!["€! ###".into()],
        ..StopConfig::default()
    });
    let (out, fin) = run(&tok, &mut c, &[0, 2, 3, 4, 5, 6]);
    let fin = fin.unwrap();
    assert_eq!(fin.reason, Finish::Stop("€! ###".into()));
    assert_eq!((out.as_str(), fin.text.as_str()), ("Hello", "Hello"));
    let m = fin.stop_match.unwrap();
    // "€" takes three tokens; "!" rides on the third; " ###" is token 5.
    assert_eq!(
        (m.start, m.end, m.tokens_before, m.tokens_through),
        (5, 13, 1, 5)
    );
}

/// Token units the property tests draw from: every word, a special token, the `</think>` added
/// token, and whole characters spelled as byte-fallback tokens ("€" as 3 tokens, "é" as 2), so
/// that partial characters occur inside a valid UTF-8 stream. (Invalid byte sequences decode
/// lossily per group of consecutive byte tokens, which a stream cannot reproduce exactly; that
/// case is covered by `eos_and_length`.)
fn units(sp: &Sp) -> Vec<Vec<u32>> {
    let mut u: Vec<Vec<u32>> = WORDS.iter().map(|w| vec![sp.id(w)]).collect();
    u.push(sp.ids(&["0xE2", "0x82", "0xAC"]));
    u.push(sp.ids(&["0xC3", "0xA9"]));
    u.push(sp.ids(&["<s>"]));
    u.push(sp.ids(&["</think>"]));
    u
}

fn pick_ids(sp: &Sp, picks: &[usize]) -> Vec<u32> {
    let u = units(sp);
    picks.iter().flat_map(|&i| u[i % u.len()].clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Without stop strings, the concatenated deltas equal one full decode of all the tokens.
    #[test]
    fn deltas_concatenate_to_the_full_decode(picks in prop::collection::vec(0usize..27, 1..40)) {
        let sp = Sp::new();
        let ids = pick_ids(&sp, &picks);
        let mut c = StopChecker::new(StopConfig { max_new_tokens: ids.len(), ..cfg(&[]) });
        let (out, fin) = run(&sp.tok, &mut c, &ids);
        let fin = fin.unwrap();
        prop_assert_eq!(fin.reason, Finish::Length);
        let full = sp.tok.decode(&ids, true).unwrap();
        prop_assert!(!full.contains(char::REPLACEMENT_CHARACTER), "{:?}", full);
        prop_assert_eq!(&out, &full);
        prop_assert_eq!(&fin.text, &full);
    }

    /// With one stop string, the sequence stops at its first occurrence in the full decode, the
    /// streamed text is exactly the text before it, and the token counts bracket the match.
    #[test]
    fn stops_at_the_first_occurrence(picks in prop::collection::vec(0usize..27, 1..40), stop_pick in 0usize..7) {
        let stop = ["ab", "b a", "##", "\n#", "€", "x€", "é€"][stop_pick];
        let sp = Sp::new();
        let ids = pick_ids(&sp, &picks);
        let mut c = StopChecker::new(StopConfig { max_new_tokens: ids.len(), ..cfg(&[stop]) });
        let (out, fin) = run(&sp.tok, &mut c, &ids);
        let fin = fin.unwrap();
        let full = sp.tok.decode(&ids, true).unwrap();
        match full.find(stop) {
            Some(pos) => {
                prop_assert_eq!(&fin.reason, &Finish::Stop(stop.to_string()));
                prop_assert_eq!(&out, &full[..pos]);
                prop_assert_eq!(&fin.text, &full[..pos]);
                let m = fin.stop_match.unwrap();
                prop_assert_eq!((m.start, m.end), (pos, pos + stop.len()));
                // Tokens before the match decode to a prefix of the text before it; the tokens
                // through the match cover it.
                let before = sp.tok.decode(&ids[..m.tokens_before], true).unwrap();
                prop_assert!(full[..pos].starts_with(before.trim_end_matches('\u{FFFD}')), "{:?} / {:?}", before, &full[..pos]);
                let through = sp.tok.decode(&ids[..m.tokens_through], true).unwrap();
                prop_assert!(through.len() >= pos + stop.len() && through.contains(stop), "{:?}", through);
                prop_assert_eq!(fin.num_tokens, m.tokens_through);
            }
            None => {
                prop_assert_eq!(fin.reason, Finish::Length);
                prop_assert_eq!(&out, &full);
            }
        }
    }
}
