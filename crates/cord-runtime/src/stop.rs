//! Incremental detokenization and stop detection for one generated sequence.
//!
//! A [`StopChecker`] is fed the sampled token ids one at a time ([`StopChecker::push`]) and keeps
//! the text decoded so far. It stops on
//! * an EOS id ([`Finish::Eos`]; the EOS token adds no text),
//! * a stop string found in the **decoded text** ([`Finish::Stop`]); a stop string may span
//!   several tokens and may start or end in the middle of a token,
//! * `max_new_tokens` generated tokens ([`Finish::Length`]).
//!
//! Decoding uses the prefix-offset / read-offset scheme (as in TGI and vLLM): each step decodes the
//! window `ids[prefix_offset..]` and the previous window `ids[prefix_offset..read_offset]`, and the
//! new text is the difference. A window whose decode ends in U+FFFD (an incomplete UTF-8 sequence
//! from byte-fallback or byte-level tokens) is held back until a later token completes it, so the
//! text never contains a spurious replacement character in the middle. At the end of generation a
//! still-incomplete tail is decoded as it is (lossy).
//!
//! Streaming: [`StepOutput::delta`] is the text that is safe to show now. Any suffix of the text
//! that could be the beginning of a stop string is held back until it is either completed (and cut)
//! or ruled out, so a caller that concatenates the deltas never shows part of a stop string.
//!
//! Token bookkeeping: for every generated token the checker records the text length once its
//! bytes are complete, so a stop match at byte range `start..end` of the generated text maps to
//! [`StopMatch::tokens_before`] (tokens whose text lies entirely before `start`) and
//! [`StopMatch::tokens_through`] (tokens needed to cover `..end`). The engine uses these to drop the
//! KV entries past the cut.

use tokenizers::Tokenizer;

/// Errors of the stop checker.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StopError {
    #[error("the sequence has already finished")]
    AlreadyFinished,
    #[error("detokenization failed: {0}")]
    Decode(String),
}

/// Why a sequence finished.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// An EOS token id was generated.
    Eos,
    /// The given stop string appeared in the decoded text.
    Stop(String),
    /// `max_new_tokens` tokens were generated.
    Length,
}

impl Finish {
    pub fn as_str(&self) -> &'static str {
        match self {
            Finish::Eos => "stop",
            Finish::Stop(_) => "stop_string",
            Finish::Length => "length",
        }
    }
}

/// What ends one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopConfig {
    /// Token ids that end the sequence (e.g. `<|im_end|>`, `<|eot_id|>`, `<eos>`).
    pub eos_token_ids: Vec<u32>,
    /// Strings that end the sequence when they appear in the decoded text. Empty strings are
    /// ignored.
    pub stop_strings: Vec<String>,
    /// Maximum number of generated tokens (EOS included); `usize::MAX` for no limit.
    pub max_new_tokens: usize,
    /// Whether the final text keeps the matched stop string.
    pub include_stop_string: bool,
    /// Passed to `Tokenizer::decode`: drop special tokens (e.g. `<|im_end|>`) from the text.
    pub skip_special_tokens: bool,
}

impl Default for StopConfig {
    fn default() -> Self {
        Self {
            eos_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            max_new_tokens: usize::MAX,
            include_stop_string: false,
            skip_special_tokens: true,
        }
    }
}

/// Where a stop string matched, in the generated text and in the generated tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopMatch {
    pub stop: String,
    /// Byte offset of the match in the generated text.
    pub start: usize,
    /// Byte offset just past the match.
    pub end: usize,
    /// Number of leading generated tokens whose text lies entirely before `start`. Keeping only
    /// these tokens drops every token that holds any byte of the stop string. (Text of a token that
    /// straddles `start` is then partly lost; `start` tells exactly where the text is cut.)
    pub tokens_before: usize,
    /// Number of leading generated tokens needed to produce the text up to `end`: every token whose
    /// text starts before `end` (all tokens of a multi-token character count together).
    pub tokens_through: usize,
}

/// The end of a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub reason: Finish,
    /// The final generated text: the whole decoded text for `Eos`/`Length`; for `Stop`, the text up
    /// to the match, with or without the stop string according to `include_stop_string`.
    pub text: String,
    /// Set when `reason` is `Stop`.
    pub stop_match: Option<StopMatch>,
    /// Number of tokens pushed (an EOS token included).
    pub num_tokens: usize,
    /// How many leading generated tokens belong to `text`: `tokens_through` or `tokens_before` of
    /// the match for `Stop` (per `include_stop_string`), else `num_tokens`.
    pub tokens_to_keep: usize,
}

/// Result of one [`StopChecker::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutput {
    /// New text that is safe to emit now (possibly empty).
    pub delta: String,
    /// Set on the step that ends the sequence.
    pub finished: Option<Finished>,
}

/// Incremental detokenizer + stop detector for one sequence.
#[derive(Debug, Clone)]
pub struct StopChecker {
    cfg: StopConfig,
    /// Context ids (not part of the output) followed by the generated non-EOS ids.
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// The decoded generated text.
    text: String,
    /// Per generated token: `text.len()` before its bytes (tokens of one multi-token character
    /// share the start of that character).
    starts: Vec<usize>,
    /// Per generated token: `text.len()` once its bytes are complete (`usize::MAX` while pending).
    ends: Vec<usize>,
    /// Index into `ends` of the first token whose bytes are still pending.
    pending_from: usize,
    /// Bytes of `text` already returned as deltas.
    emitted: usize,
    max_stop_len: usize,
    finished: bool,
}

impl StopChecker {
    /// A checker with no decoding context.
    pub fn new(cfg: StopConfig) -> Self {
        Self::with_context(cfg, &[])
    }

    /// A checker whose decode windows start with `context` (typically the last few prompt tokens).
    /// The context text is never emitted; it only makes the first generated tokens decode as they
    /// would inside the whole sequence (e.g. SentencePiece decoders strip the leading space of the
    /// first token of a decode).
    pub fn with_context(mut cfg: StopConfig, context: &[u32]) -> Self {
        cfg.stop_strings.retain(|s| !s.is_empty());
        let max_stop_len = cfg.stop_strings.iter().map(String::len).max().unwrap_or(0);
        Self {
            cfg,
            ids: context.to_vec(),
            prefix_offset: 0,
            read_offset: context.len(),
            text: String::new(),
            starts: Vec::new(),
            ends: Vec::new(),
            pending_from: 0,
            emitted: 0,
            max_stop_len,
            finished: false,
        }
    }

    pub fn config(&self) -> &StopConfig {
        &self.cfg
    }

    /// All text decoded so far (including any part held back from streaming).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Number of generated tokens pushed so far.
    pub fn num_tokens(&self) -> usize {
        self.ends.len()
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Feeds one generated token. Returns the text that became safe to emit, and the end of the
    /// sequence if this token ends it.
    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<StepOutput, StopError> {
        if self.finished {
            return Err(StopError::AlreadyFinished);
        }
        let old_len = self.text.len();
        if self.cfg.eos_token_ids.contains(&token) {
            self.flush(tokenizer)?;
            self.starts.push(self.text.len());
            self.ends.push(self.text.len());
            let m = self.find_stop(old_len);
            let reason = m
                .as_ref()
                .map_or(Finish::Eos, |m| Finish::Stop(m.stop.clone()));
            return Ok(self.finish(reason, m));
        }
        self.ids.push(token);
        self.starts.push(self.text.len());
        self.ends.push(usize::MAX);
        self.decode_step(tokenizer, false)?;
        if let Some(m) = self.find_stop(old_len) {
            return Ok(self.finish(Finish::Stop(m.stop.clone()), Some(m)));
        }
        if self.ends.len() >= self.cfg.max_new_tokens {
            self.flush(tokenizer)?;
            let m = self.find_stop(old_len);
            let reason = m
                .as_ref()
                .map_or(Finish::Length, |m| Finish::Stop(m.stop.clone()));
            return Ok(self.finish(reason, m));
        }
        let safe = self.text.len() - self.stop_prefix_suffix_len();
        let delta = self
            .text
            .get(self.emitted..safe)
            .unwrap_or_default()
            .to_string();
        self.emitted = self.emitted.max(safe);
        Ok(StepOutput {
            delta,
            finished: None,
        })
    }

    /// Decodes the new window; with `force`, takes the text even if it ends in an incomplete
    /// character.
    fn decode_step(&mut self, tokenizer: &Tokenizer, force: bool) -> Result<(), StopError> {
        if self.pending_from >= self.ends.len() {
            return Ok(());
        }
        let skip = self.cfg.skip_special_tokens;
        let decode = |ids: &[u32]| {
            tokenizer
                .decode(ids, skip)
                .map_err(|e| StopError::Decode(e.to_string()))
        };
        let prefix_text = decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let new_text = decode(&self.ids[self.prefix_offset..])?;
        let incomplete = new_text.ends_with('\u{FFFD}');
        if new_text.len() > prefix_text.len() && (force || !incomplete) {
            let mut from = prefix_text.len();
            if !new_text.starts_with(&prefix_text) {
                // The decoder rewrote earlier text; take what follows the common length.
                while !new_text.is_char_boundary(from) {
                    from += 1;
                }
            }
            self.text.push_str(&new_text[from..]);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            self.complete_pending();
        } else if force || !incomplete {
            // The token(s) add no text (e.g. a skipped special token): complete, nothing to show.
            self.complete_pending();
        }
        Ok(())
    }

    fn complete_pending(&mut self) {
        let len = self.text.len();
        for e in &mut self.ends[self.pending_from..] {
            *e = len;
        }
        self.pending_from = self.ends.len();
    }

    fn flush(&mut self, tokenizer: &Tokenizer) -> Result<(), StopError> {
        self.decode_step(tokenizer, true)
    }

    /// The earliest stop-string match that ends after `old_len` (earlier matches were already
    /// checked); ties at the same start go to the longer stop string.
    fn find_stop(&self, old_len: usize) -> Option<StopMatch> {
        if self.max_stop_len == 0 || self.text.len() == old_len {
            return None;
        }
        let mut from = old_len.saturating_sub(self.max_stop_len - 1);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hay = &self.text[from..];
        let mut best: Option<(usize, &str)> = None;
        for s in &self.cfg.stop_strings {
            if let Some(pos) = hay.find(s.as_str()) {
                let better = match best {
                    None => true,
                    Some((bp, bs)) => pos < bp || (pos == bp && s.len() > bs.len()),
                };
                if better {
                    best = Some((pos, s));
                }
            }
        }
        let (pos, s) = best?;
        let start = from + pos;
        let end = start + s.len();
        Some(StopMatch {
            stop: s.to_string(),
            start,
            end,
            tokens_before: self.ends.partition_point(|&e| e <= start),
            tokens_through: self.starts.partition_point(|&s| s < end),
        })
    }

    /// Length of the longest suffix of the text that is a proper prefix of some stop string.
    fn stop_prefix_suffix_len(&self) -> usize {
        let t = self.text.as_bytes();
        let max = self.max_stop_len.saturating_sub(1).min(t.len());
        (1..=max)
            .rev()
            .find(|&k| {
                self.cfg
                    .stop_strings
                    .iter()
                    .any(|s| s.len() > k && s.as_bytes().starts_with(&t[t.len() - k..]))
            })
            .unwrap_or(0)
    }

    fn finish(&mut self, reason: Finish, m: Option<StopMatch>) -> StepOutput {
        self.finished = true;
        let num_tokens = self.ends.len();
        let (cut, tokens_to_keep) = match &m {
            Some(m) if self.cfg.include_stop_string => (m.end, m.tokens_through),
            Some(m) => (m.start, m.tokens_before),
            None => (self.text.len(), num_tokens),
        };
        let delta = self
            .text
            .get(self.emitted..cut)
            .unwrap_or_default()
            .to_string();
        self.emitted = self.emitted.max(cut);
        let text = self.text[..cut].to_string();
        StepOutput {
            delta,
            finished: Some(Finished {
                reason,
                text,
                stop_match: m,
                num_tokens,
                tokens_to_keep,
            }),
        }
    }
}
