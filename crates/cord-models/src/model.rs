//! The shared decoder skeleton and its forward pass over a paged KV cache.

use std::collections::HashSet;

use candle_core::{D, DType, Device, Tensor};
use cord_kernels::{AttentionParams, AttentionPlan, PlanSeq, paged_attention};
use cord_kv::{KvCache, KvConfig, SeqId};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layers::{CosSin, Linear, RmsNorm, Rope, activate};
use crate::weights::{WeightSource, random_weights};

/// Which logits a sequence of the batch wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// One row: the last new position.
    Last,
    /// One row per new token.
    All,
    /// One row for each of the last `n` new positions (at most all of them): what teacher-forced
    /// scoring of an `n`-token continuation needs, without the vocabulary projection of the
    /// context rows.
    Tail(usize),
}

/// How attention reads the paged KV cache (chosen by the caller: [`crate::LoadOptions`] or
/// [`Model::set_attention`]; the default is `Paged` on every device).
///
/// On the CPU the paged op's reference loop computes every query row on its own, in a fixed
/// order, so a token's result does not depend on how many other tokens share the forward.
/// `Gather` uses candle's f32 matmuls, whose blocking changes with the number of query rows
/// (~1e-5 differences); with quantized weights the next layer's 8-bit activation quantization
/// turns those into whole rounding steps, and a token's log-prob then moves by up to the
/// quantization noise (0.03–0.07 nats measured on SmolLM2 / Qwen2.5 for one position as the
/// scored text grows past 6–9 tokens; docs/testing.md). Scores must not depend on what else is
/// in the batch, so `Gather` is opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Attention {
    /// `cord_kernels::paged_attention`: every layer reads K/V through the block tables in one
    /// op for the whole batch (the CUDA kernel on GPUs, its CPU reference elsewhere).
    #[default]
    Paged,
    /// Per sequence: gather its K/V into dense tensors, then masked matmul + softmax (candle ops).
    Gather,
}

impl Attention {
    /// `paged` or `gather`.
    pub fn parse(s: &str) -> Option<Attention> {
        match s {
            "paged" => Some(Attention::Paged),
            "gather" => Some(Attention::Gather),
            _ => None,
        }
    }
}

/// One sequence of a ragged batch: its new tokens, appended at `kv.seq_len(seq)`.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    pub seq: SeqId,
    pub tokens: &'a [u32],
    pub logits: LogitsMode,
}

impl<'a> SeqInput<'a> {
    pub fn new(seq: SeqId, tokens: &'a [u32], logits: LogitsMode) -> Self {
        SeqInput {
            seq,
            tokens,
            logits,
        }
    }
}

#[derive(Debug, Clone)]
enum Qkv {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

#[derive(Debug, Clone)]
enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

#[derive(Debug, Clone)]
struct Layer {
    qkv: Qkv,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    gate_up: GateUp,
    down: Linear,
    input_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    /// gemma3: `pre_feedforward_layernorm` and `post_feedforward_layernorm`.
    ffn_norms: Option<(RmsNorm, RmsNorm)>,
    sliding: bool,
}

/// Per-call data shared by all layers.
struct Ctx<'a> {
    batch: &'a [SeqInput<'a>],
    /// Start offset of each sequence's tokens in the packed `[T, ..]` tensors.
    offsets: Vec<usize>,
    /// Cached length of each sequence before this call.
    starts: Vec<usize>,
    slots: Tensor,
    rope_global: CosSin,
    rope_local: Option<CosSin>,
    /// Additive masks per sequence: (full, sliding); None when no masking is needed (gather).
    masks: Vec<(Option<Tensor>, Option<Tensor>)>,
    /// Block tables of the batch (paged attention).
    plan: Option<AttentionPlan>,
}

/// One decoder, any supported architecture. Usable through `&self` from several roles.
#[derive(Debug, Clone)]
pub struct Model {
    cfg: ModelConfig,
    dtype: DType,
    device: Device,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope_global: Rope,
    rope_local: Option<Rope>,
    attention: Attention,
}

impl Model {
    /// Builds the model from a weight source (HF names), activations in `dtype`.
    pub fn from_source(
        cfg: &ModelConfig,
        src: &WeightSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Model> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let q_out = cfg.num_heads * cfg.head_dim;
        let kv_out = cfg.num_kv_heads * cfg.head_dim;
        let norm = |name: &str, n: usize| -> Result<RmsNorm> {
            let w = src.tensor(&format!("{name}.weight"), &[n], dtype, device)?;
            let w = if cfg.norm_weight_offset != 0.0 {
                (w + cfg.norm_weight_offset)?
            } else {
                w
            };
            Ok(RmsNorm::new(w, cfg.rms_norm_eps))
        };
        let lin = |name: &str, out: usize, inp: usize, bias: bool| {
            src.linear(name, out, inp, bias, dtype, device)
        };
        let embed = src.tensor(
            "model.embed_tokens.weight",
            &[cfg.vocab_size, h],
            dtype,
            device,
        )?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let qkv = if cfg.fused_qkv {
                Qkv::Fused(lin(
                    &format!("{p}.self_attn.qkv_proj"),
                    q_out + 2 * kv_out,
                    h,
                    cfg.qkv_bias,
                )?)
            } else {
                Qkv::Separate {
                    q: lin(&format!("{p}.self_attn.q_proj"), q_out, h, cfg.qkv_bias)?,
                    k: lin(&format!("{p}.self_attn.k_proj"), kv_out, h, cfg.qkv_bias)?,
                    v: lin(&format!("{p}.self_attn.v_proj"), kv_out, h, cfg.qkv_bias)?,
                }
            };
            let gate_up = if cfg.fused_gate_up {
                GateUp::Fused(lin(
                    &format!("{p}.mlp.gate_up_proj"),
                    2 * i,
                    h,
                    cfg.mlp_bias,
                )?)
            } else {
                GateUp::Separate {
                    gate: lin(&format!("{p}.mlp.gate_proj"), i, h, cfg.mlp_bias)?,
                    up: lin(&format!("{p}.mlp.up_proj"), i, h, cfg.mlp_bias)?,
                }
            };
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(norm(&format!("{p}.self_attn.q_norm"), cfg.head_dim)?),
                    Some(norm(&format!("{p}.self_attn.k_norm"), cfg.head_dim)?),
                )
            } else {
                (None, None)
            };
            let ffn_norms = if cfg.sandwich_norms {
                Some((
                    norm(&format!("{p}.pre_feedforward_layernorm"), h)?,
                    norm(&format!("{p}.post_feedforward_layernorm"), h)?,
                ))
            } else {
                None
            };
            layers.push(Layer {
                qkv,
                o: lin(&format!("{p}.self_attn.o_proj"), h, q_out, cfg.o_bias)?,
                q_norm,
                k_norm,
                gate_up,
                down: lin(&format!("{p}.mlp.down_proj"), h, i, cfg.mlp_bias)?,
                input_norm: norm(&format!("{p}.input_layernorm"), h)?,
                post_attn_norm: norm(&format!("{p}.post_attention_layernorm"), h)?,
                ffn_norms,
                sliding: cfg.sliding_layers.get(l).copied().unwrap_or(false),
            });
        }
        let final_norm = norm("model.norm", h)?;
        let lm_head = if !cfg.tie_word_embeddings && src.contains("lm_head.weight") {
            lin("lm_head", cfg.vocab_size, h, false)?
        } else if matches!(src, WeightSource::Gguf { .. }) {
            // Tied GGUF: run the output projection through the (quantized) embedding table.
            lin("model.embed_tokens", cfg.vocab_size, h, false)?
        } else {
            Linear::dense(embed.clone(), None)
        };
        let rope_global = Rope::new(
            cfg.rotary_dim,
            cfg.rope_theta,
            cfg.rope_scaling.as_ref(),
            cfg.rope_interleaved,
        );
        let rope_local = cfg.sliding_layers.iter().any(|&s| s).then(|| {
            if cfg.rope_local_theta == cfg.rope_theta {
                rope_global.clone()
            } else {
                Rope::new(
                    cfg.rotary_dim,
                    cfg.rope_local_theta,
                    None,
                    cfg.rope_interleaved,
                )
            }
        });
        Ok(Model {
            cfg: cfg.clone(),
            dtype,
            device: device.clone(),
            embed,
            layers,
            norm: final_norm,
            lm_head,
            rope_global,
            rope_local,
            attention: Attention::default(),
        })
    }

    /// How attention reads the cache (default: [`Attention::Paged`]).
    pub fn attention(&self) -> Attention {
        self.attention
    }

    pub fn set_attention(&mut self, attention: Attention) {
        self.attention = attention;
    }

    /// A model with random weights of the given config (benchmarks, tests).
    pub fn random(cfg: &ModelConfig, dtype: DType, device: &Device, seed: u64) -> Result<Model> {
        let map = random_weights(cfg, dtype, device, seed)?;
        let src = WeightSource::Map {
            map,
            origin: "random weights".into(),
        };
        Model::from_source(cfg, &src, dtype, device)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Activation dtype (also the KV cache dtype).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// KV cache shape for this model.
    pub fn kv_config(&self, num_blocks: usize, block_size: usize) -> KvConfig {
        KvConfig::new(
            self.cfg.num_layers,
            self.cfg.num_kv_heads,
            self.cfg.head_dim,
            self.dtype,
            self.device.clone(),
        )
        .with_block_size(block_size)
        .with_num_blocks(num_blocks)
    }

    /// Bytes of K+V per cached token.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.cfg.kv_bytes_per_token(self.dtype)
    }

    /// Runs a ragged batch: appends every sequence's tokens to the cache and returns f32
    /// logits `[rows, vocab]`, rows in batch order (1 per `Last`, `tokens.len()` per `All`).
    ///
    /// On any error the sequences are truncated back to their length before the call.
    pub fn forward(&self, batch: &[SeqInput], kv: &mut KvCache) -> Result<Tensor> {
        if batch.is_empty() {
            return Err(ModelError::BadInput("empty batch".into()));
        }
        let mut seen = HashSet::new();
        let mut starts = Vec::with_capacity(batch.len());
        for inp in batch {
            if inp.tokens.is_empty() {
                return Err(ModelError::BadInput(format!(
                    "sequence {} has no new tokens",
                    inp.seq
                )));
            }
            if !seen.insert(inp.seq) {
                return Err(ModelError::BadInput(format!(
                    "sequence {} appears twice in the batch",
                    inp.seq
                )));
            }
            if let Some(&t) = inp
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.cfg.vocab_size)
            {
                return Err(ModelError::BadInput(format!(
                    "token id {t} of sequence {} is outside the vocabulary ({})",
                    inp.seq, self.cfg.vocab_size
                )));
            }
            starts.push(kv.seq_len(inp.seq)?);
        }
        let mut slots = Vec::with_capacity(batch.iter().map(|b| b.tokens.len()).sum());
        for (n, inp) in batch.iter().enumerate() {
            match kv.append_slots(inp.seq, inp.tokens) {
                Ok(s) => slots.extend(s),
                Err(e) => {
                    rollback(kv, &batch[..n], &starts);
                    return Err(e.into());
                }
            }
        }
        match self.run(batch, &starts, slots, kv) {
            Ok(t) => Ok(t),
            Err(e) => {
                rollback(kv, batch, &starts);
                Err(e)
            }
        }
    }

    fn run(
        &self,
        batch: &[SeqInput],
        starts: &[usize],
        slots: Vec<u32>,
        kv: &KvCache,
    ) -> Result<Tensor> {
        let total = slots.len();
        let mut ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(batch.len());
        let mut rows = vec![];
        let mut masks = Vec::with_capacity(batch.len());
        for (inp, &start) in batch.iter().zip(starts) {
            let off = ids.len();
            offsets.push(off);
            ids.extend_from_slice(inp.tokens);
            positions.extend((0..inp.tokens.len()).map(|i| (start + i) as u32));
            match inp.logits {
                LogitsMode::Last => rows.push((off + inp.tokens.len() - 1) as u32),
                LogitsMode::All => rows.extend((off..off + inp.tokens.len()).map(|r| r as u32)),
                LogitsMode::Tail(n) => {
                    let len = inp.tokens.len();
                    rows.extend((off + len - n.min(len)..off + len).map(|r| r as u32))
                }
            }
            if self.attention == Attention::Gather {
                let t = inp.tokens.len();
                let full = self.mask(t, start, None)?;
                let sliding = match (self.rope_local.is_some(), self.cfg.sliding_window) {
                    (true, Some(w)) => self.mask(t, start, Some(w))?,
                    _ => None,
                };
                masks.push((full, sliding));
            }
        }
        let dev = &self.device;
        let plan = match self.attention {
            Attention::Gather => None,
            Attention::Paged => {
                let mut seqs = Vec::with_capacity(batch.len());
                for (inp, &start) in batch.iter().zip(starts) {
                    seqs.push(PlanSeq {
                        q_len: inp.tokens.len(),
                        ctx_len: start + inp.tokens.len(),
                        blocks: kv.block_table(inp.seq)?,
                    });
                }
                Some(AttentionPlan::new(&seqs, kv.block_size(), dev)?)
            }
        };
        let ctx = Ctx {
            batch,
            offsets,
            starts: starts.to_vec(),
            slots: Tensor::from_vec(slots, total, dev)?,
            rope_global: self.rope_global.cos_sin(&positions, dev, self.dtype)?,
            rope_local: match &self.rope_local {
                Some(r) => Some(r.cos_sin(&positions, dev, self.dtype)?),
                None => None,
            },
            masks,
            plan,
        };
        let ids = Tensor::from_vec(ids, total, dev)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        if let Some(s) = self.cfg.embed_scale {
            x = (x * s)?;
        }
        for (l, layer) in self.layers.iter().enumerate() {
            x = self.layer_forward(layer, l, &x, &ctx, kv)?;
        }
        let rows = Tensor::from_vec(rows.clone(), rows.len(), dev)?;
        let x = x.index_select(&rows, 0)?;
        let x = self.norm.forward(&x)?;
        let logits = self.lm_head.forward(&x)?.to_dtype(DType::F32)?;
        Ok(match self.cfg.final_logit_softcapping {
            None => logits,
            Some(sc) => ((logits / sc)?.tanh()? * sc)?,
        })
    }

    /// Additive mask `[t, start + t]` for `t` new queries after `start` cached tokens; None when
    /// every query may see every key.
    fn mask(&self, t: usize, start: usize, window: Option<usize>) -> Result<Option<Tensor>> {
        let len = start + t;
        let window_bites = window.is_some_and(|w| len > w);
        if t == 1 && !window_bites {
            return Ok(None);
        }
        let mut m = vec![0f32; t * len];
        for i in 0..t {
            let qpos = start + i;
            for (j, v) in m[i * len..(i + 1) * len].iter_mut().enumerate() {
                let visible = j <= qpos && window.is_none_or(|w| qpos - j < w);
                if !visible {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        Ok(Some(Tensor::from_vec(m, (t, len), &self.device)?))
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        l: usize,
        x: &Tensor,
        ctx: &Ctx,
        kv: &KvCache,
    ) -> Result<Tensor> {
        let h = layer.input_norm.forward(x)?;
        let a = self.attend(layer, l, &h, ctx, kv)?;
        match &layer.ffn_norms {
            None => {
                let x = (x + a)?;
                let h = layer.post_attn_norm.forward(&x)?;
                Ok((x + self.mlp(layer, &h)?)?)
            }
            Some((pre, post)) => {
                let x = (x + layer.post_attn_norm.forward(&a)?)?;
                let h = pre.forward(&x)?;
                let m = post.forward(&self.mlp(layer, &h)?)?;
                Ok((x + m)?)
            }
        }
    }

    fn mlp(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let i = self.cfg.intermediate_size;
        let (gate, up) = match &layer.gate_up {
            GateUp::Separate { gate, up } => (gate.forward(x)?, up.forward(x)?),
            GateUp::Fused(gu) => {
                let y = gu.forward(x)?;
                (y.narrow(D::Minus1, 0, i)?, y.narrow(D::Minus1, i, i)?)
            }
        };
        let h = (activate(self.cfg.activation, &gate)? * up)?;
        layer.down.forward(&h)
    }

    fn attend(
        &self,
        layer: &Layer,
        l: usize,
        x: &Tensor,
        ctx: &Ctx,
        kv: &KvCache,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let total = x.dim(0)?;
        let (q, k, v) = match &layer.qkv {
            Qkv::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            Qkv::Fused(qkv) => {
                let y = qkv.forward(x)?;
                (
                    y.narrow(1, 0, nh * hd)?,
                    y.narrow(1, nh * hd, nkv * hd)?,
                    y.narrow(1, (nh + nkv) * hd, nkv * hd)?,
                )
            }
        };
        let mut q = q.contiguous()?.reshape((total, nh, hd))?;
        let mut k = k.contiguous()?.reshape((total, nkv, hd))?;
        let v = v.contiguous()?.reshape((total, nkv, hd))?;
        if let Some(n) = &layer.q_norm {
            q = n.forward(&q)?;
        }
        if let Some(n) = &layer.k_norm {
            k = n.forward(&k)?;
        }
        let rope = match (&ctx.rope_local, layer.sliding) {
            (Some(r), true) => r,
            _ => &ctx.rope_global,
        };
        // [1, heads, T, hd] for candle's rope kernels with per-token cos/sin rows.
        let q = rope
            .apply(&q.transpose(0, 1)?.contiguous()?.unsqueeze(0)?)?
            .squeeze(0)?;
        let k = rope
            .apply(&k.transpose(0, 1)?.contiguous()?.unsqueeze(0)?)?
            .squeeze(0)?;
        let kv_dtype = kv.config().dtype;
        let k_tok = k.transpose(0, 1)?.contiguous()?.to_dtype(kv_dtype)?;
        kv.write(l, &ctx.slots, &k_tok, &v.to_dtype(kv_dtype)?)?;

        let scale = cfg.attn_scale();
        if let Some(plan) = &ctx.plan {
            let (kc, vc) = kv.try_layer_cache(l)?;
            let params = AttentionParams {
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: hd,
                scale: scale as f32,
                softcap: cfg.attn_logit_softcapping.map(|c| c as f32),
                window: if layer.sliding {
                    cfg.sliding_window
                } else {
                    None
                },
            };
            let q = q.transpose(0, 1)?.contiguous()?.to_dtype(kv_dtype)?;
            let o = paged_attention(&q, kc, vc, plan, &params)?
                .reshape((total, nh * hd))?
                .to_dtype(self.dtype)?;
            return layer.o.forward(&o);
        }
        let groups = nh / nkv;
        let mut outs = Vec::with_capacity(ctx.batch.len());
        for (n, inp) in ctx.batch.iter().enumerate() {
            let t = inp.tokens.len();
            let len = ctx.starts[n] + t;
            let (kc, vc) = kv.gather(l, inp.seq)?;
            if kc.dim(0)? != len {
                return Err(ModelError::BadInput(format!(
                    "cache returned {} positions for sequence {}, expected {len}",
                    kc.dim(0)?,
                    inp.seq
                )));
            }
            // [nkv, len, hd], computed in f32.
            let kc = kc.to_dtype(DType::F32)?.transpose(0, 1)?.contiguous()?;
            let vc = vc.to_dtype(DType::F32)?.transpose(0, 1)?.contiguous()?;
            // [nh, t, hd] -> [nkv, groups * t, hd]: query heads of one kv head are adjacent.
            let qs = q
                .narrow(1, ctx.offsets[n], t)?
                .to_dtype(DType::F32)?
                .contiguous()?
                .reshape((nkv, groups * t, hd))?;
            let mut att = (qs.matmul(&kc.t()?)? * scale)?;
            if let Some(sc) = cfg.attn_logit_softcapping {
                att = ((att / sc)?.tanh()? * sc)?;
            }
            let mask = if layer.sliding {
                &ctx.masks[n].1
            } else {
                &ctx.masks[n].0
            };
            if let Some(m) = mask {
                att = att
                    .reshape((nkv, groups, t, len))?
                    .broadcast_add(m)?
                    .reshape((nkv, groups * t, len))?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let o = att
                .matmul(&vc)?
                .reshape((nh, t, hd))?
                .transpose(0, 1)?
                .reshape((t, nh * hd))?;
            outs.push(o);
        }
        let o = Tensor::cat(&outs, 0)?.to_dtype(self.dtype)?;
        layer.o.forward(&o)
    }
}

/// Truncates the given sequences back to their lengths before the failed call.
fn rollback(kv: &mut KvCache, batch: &[SeqInput], starts: &[usize]) {
    for (inp, &s) in batch.iter().zip(starts) {
        if let Err(e) = kv.truncate(inp.seq, s) {
            tracing::warn!("rollback of sequence {} to {s} failed: {e}", inp.seq);
        }
    }
}
