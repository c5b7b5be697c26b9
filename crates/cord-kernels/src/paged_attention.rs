//! Paged attention: every new token of a ragged batch attends to its sequence's cached keys,
//! read through the sequence's block table (no gather of the cache into dense tensors).
//!
//! Query `i` of a sequence with `q_len` new tokens and `ctx_len` cached tokens in total (the new
//! ones included, their K/V already written) sits at position `p = ctx_len - q_len + i` and sees
//! keys `0..=p` (causal, bottom-right aligned), or `p - window + 1..=p` with a sliding window.
//! One call covers decode (`q_len = 1`) and append/prefill (`q_len > 1` after a cached prefix).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Head layout and score shaping of one attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies `q . k`.
    pub scale: f32,
    /// Gemma-2-style logit soft-capping: `softcap * tanh(score / softcap)`.
    pub softcap: Option<f32>,
    /// Sliding window: a query at position `p` sees keys `p - window + 1..=p`.
    pub window: Option<usize>,
}

/// One sequence of a batch as attention sees it.
#[derive(Debug, Clone, Copy)]
pub struct PlanSeq<'a> {
    /// New tokens (queries) of the sequence in this call; they are packed in batch order.
    pub q_len: usize,
    /// Cached tokens after this call's K/V writes (the new ones included).
    pub ctx_len: usize,
    /// The sequence's block table: at least `ctx_len.div_ceil(block_size)` blocks.
    pub blocks: &'a [u32],
}

/// Where every query token and its keys are: token → sequence, per sequence
/// `(q_start, q_len, ctx_len)`, and the block tables padded to one width. Built once per forward
/// (on the cache's device) and shared by every layer.
///
/// Layout of the u32 buffer (the kernel reads it as is): `tok_seq[T] | meta[S][3] |
/// tables[S][max_blocks]`.
#[derive(Debug, Clone)]
pub struct AttentionPlan {
    n_tokens: usize,
    n_seqs: usize,
    max_blocks: usize,
    block_size: usize,
    /// Largest block id referenced (checked against the cache at call time).
    max_block_id: u32,
    host: Arc<Vec<u32>>,
    /// The same buffer on the cache's device (what the CUDA kernel reads).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    device: Tensor,
}

impl AttentionPlan {
    pub fn new(seqs: &[PlanSeq], block_size: usize, device: &Device) -> Result<Self> {
        if block_size == 0 {
            bail!("paged-attention: block size 0")
        }
        let n_tokens: usize = seqs.iter().map(|s| s.q_len).sum();
        let max_blocks = seqs
            .iter()
            .map(|s| s.ctx_len.div_ceil(block_size))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut buf = Vec::with_capacity(n_tokens + seqs.len() * (3 + max_blocks));
        for (i, s) in seqs.iter().enumerate() {
            if s.q_len == 0 || s.q_len > s.ctx_len {
                bail!(
                    "paged-attention: sequence {i} has {} new of {} tokens",
                    s.q_len,
                    s.ctx_len
                )
            }
            let need = s.ctx_len.div_ceil(block_size);
            if s.blocks.len() < need {
                bail!(
                    "paged-attention: sequence {i} holds {} blocks, {need} needed for {} tokens",
                    s.blocks.len(),
                    s.ctx_len
                )
            }
            buf.extend(std::iter::repeat_n(i as u32, s.q_len));
        }
        let mut q_start = 0;
        for s in seqs {
            buf.extend([q_start as u32, s.q_len as u32, s.ctx_len as u32]);
            q_start += s.q_len;
        }
        let mut max_block_id = 0;
        for s in seqs {
            let used = &s.blocks[..s.ctx_len.div_ceil(block_size)];
            max_block_id = used.iter().copied().fold(max_block_id, u32::max);
            buf.extend_from_slice(used);
            buf.extend(std::iter::repeat_n(0, max_blocks - used.len()));
        }
        let device = Tensor::from_slice(&buf, buf.len(), device)?;
        Ok(AttentionPlan {
            n_tokens,
            n_seqs: seqs.len(),
            max_blocks,
            block_size,
            max_block_id,
            host: Arc::new(buf),
            device,
        })
    }
}

/// Attention of `q` (`[T, num_heads, head_dim]`, the batch's new tokens packed in plan order)
/// over one layer of the paged cache, `k` and `v` (`[num_blocks, block_size, num_kv_heads,
/// head_dim]`, the new tokens' K/V already written). Returns `[T, num_heads, head_dim]` in q's
/// dtype; scores, softmax and the weighted sum are computed in f32.
///
/// CPU: a loop in which every query row is computed on its own in a fixed order (its output
/// is the same bits whatever else is in the call), parallel over (sequence, KV head, query
/// rows). CUDA: `kernels/paged_attention.cu` (head_dim <= 256).
pub fn paged_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &AttentionPlan,
    p: &AttentionParams,
) -> Result<Tensor> {
    let (t, nh, hd) = q.dims3()?;
    let (nb, bs, nkv, hd_k) = k.dims4()?;
    if v.dims() != k.dims() {
        bail!(
            "paged-attention: k {:?} and v {:?} differ",
            k.shape(),
            v.shape()
        )
    }
    if (nh, nkv, hd) != (p.num_heads, p.num_kv_heads, p.head_dim) || hd_k != hd {
        bail!(
            "paged-attention: q {:?} / cache {:?} do not match {p:?}",
            q.shape(),
            k.shape()
        )
    }
    if nkv == 0 || nh % nkv != 0 {
        bail!("paged-attention: {nh} heads are not a multiple of {nkv} kv heads")
    }
    if t != plan.n_tokens || bs != plan.block_size {
        bail!(
            "paged-attention: {t} queries / block size {bs}, the plan has {} / {}",
            plan.n_tokens,
            plan.block_size
        )
    }
    if plan.max_block_id as usize >= nb {
        bail!(
            "paged-attention: block {} is outside the cache ({nb} blocks)",
            plan.max_block_id
        )
    }
    if q.dtype() != k.dtype() || v.dtype() != k.dtype() {
        bail!(
            "paged-attention: q {:?}, k {:?}, v {:?} must share a dtype",
            q.dtype(),
            k.dtype(),
            v.dtype()
        )
    }
    if !k.is_contiguous() || !v.is_contiguous() {
        bail!("paged-attention: the cache views must be contiguous")
    }
    let op = PagedAttention {
        plan: plan.clone(),
        p: *p,
    };
    q.contiguous()?.apply_op3_no_bwd(k, v, &op)
}

struct PagedAttention {
    plan: AttentionPlan,
    p: AttentionParams,
}

/// Element types the CPU loop reads, widened to f32.
trait Elem: Copy + Send + Sync {
    fn to_f32(self) -> f32;
    /// The slice itself when it already is f32 (no copy needed).
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
}

impl Elem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
}

impl Elem for half::bf16 {
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
}

impl Elem for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
}

/// `src` as f32: itself for f32, else widened into `buf`.
#[inline(always)]
fn widen<'a, T: Elem>(src: &'a [T], buf: &'a mut [f32]) -> &'a [f32] {
    match T::as_f32(src) {
        Some(s) => s,
        None => {
            for (d, &s) in buf.iter_mut().zip(src) {
                *d = s.to_f32();
            }
            &buf[..src.len()]
        }
    }
}

/// Accumulator lanes of [`dot`].
const LANES: usize = 16;

/// `a . b` in one fixed order: lane `l` sums the products of elements `l, l + 16, ...` (the
/// compiler keeps the lanes in vector registers), the lanes are added in a fixed tree, then the
/// tail past the last multiple of 16 (summed in order) is added.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let full = n / LANES * LANES;
    let mut acc = [0f32; LANES];
    for (ca, cb) in a[..full]
        .chunks_exact(LANES)
        .zip(b[..full].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[l] += ca[l] * cb[l];
        }
    }
    reduce_lanes(acc) + dot_tail(&a[full..], &b[full..])
}

/// The fixed tree of [`dot`] over its 16 lanes.
#[inline(always)]
fn reduce_lanes(mut acc: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

/// The tail of [`dot`]: the products past the last multiple of 16, summed in order.
#[inline(always)]
fn dot_tail(a: &[f32], b: &[f32]) -> f32 {
    let mut tail = 0f32;
    for (x, y) in a.iter().zip(b) {
        tail += x * y;
    }
    tail
}

/// Query heads whose dot products with one key share its loads ([`dot_heads`]), and whose
/// weighted sums of V share each V load.
const HEADS: usize = 4;
/// `head_dim` values of a V row that one pass of the weighted sum keeps in registers.
const CHUNK: usize = 64;

/// [`dot`] of [`HEADS`] query rows (`q`: `[HEADS][hd]`) with one key `k`: each result is the
/// same bits as `dot(q_h, k)`, the four computed side by side so the key is loaded once.
#[inline(always)]
fn dot_heads(q: &[f32], k: &[f32], hd: usize) -> [f32; HEADS] {
    let full = hd / LANES * LANES;
    let (q0, rest) = q.split_at(hd);
    let (q1, rest) = rest.split_at(hd);
    let (q2, q3) = rest.split_at(hd);
    let (mut a0, mut a1, mut a2, mut a3) =
        ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
    for ((((kc, c0), c1), c2), c3) in k[..full]
        .chunks_exact(LANES)
        .zip(q0[..full].chunks_exact(LANES))
        .zip(q1[..full].chunks_exact(LANES))
        .zip(q2[..full].chunks_exact(LANES))
        .zip(q3[..full].chunks_exact(LANES))
    {
        for l in 0..LANES {
            a0[l] += c0[l] * kc[l];
            a1[l] += c1[l] * kc[l];
            a2[l] += c2[l] * kc[l];
            a3[l] += c3[l] * kc[l];
        }
    }
    let kt = &k[full..hd];
    [
        reduce_lanes(a0) + dot_tail(&q0[full..], kt),
        reduce_lanes(a1) + dot_tail(&q1[full..], kt),
        reduce_lanes(a2) + dot_tail(&q2[full..], kt),
        reduce_lanes(a3) + dot_tail(&q3[full..hd], kt),
    ]
}

/// One unit of work: query rows `r0..r1` (plan order) of sequence `s`, all query heads of KV
/// head `kvh`.
#[derive(Clone, Copy)]
struct Item {
    s: usize,
    kvh: usize,
    r0: usize,
    r1: usize,
}

/// Scores kept per work item (f32s): bounds how many query rows share one walk over the keys.
const SCORE_BUDGET: usize = 1 << 16;
/// At most this many query rows per work item.
const MAX_ROWS: usize = 16;

/// Per-thread scratch of the CPU loop.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    acc: Vec<f32>,
    kv: Vec<f32>,
    sums: Vec<f32>,
    /// Cache slot of each of the item's keys.
    slots: Vec<usize>,
}

/// Output pointer shared by the work items; each writes its own disjoint rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the items write disjoint ranges of the buffer (see `attend_cpu`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Instruction-set tier of the CPU loop. Every tier runs the same Rust code (no FMA
/// contraction, the same operations in the same order), compiled for wider registers, so
/// they return the same bits; `tiers_agree_bit_for_bit` checks it on the machine at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Scalar,
    Avx2,
    Avx512,
}

impl Tier {
    /// The widest tier this CPU has.
    fn detect() -> Tier {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Tier::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") {
                return Tier::Avx2;
            }
        }
        Tier::Scalar
    }

    #[cfg(test)]
    fn available(self) -> bool {
        match self {
            Tier::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The CPU implementation. Every query row (token, head) is computed on its own, in one fixed
/// order that depends only on its query, its sequence's K/V and its position: scores `q . k`
/// per visible key (see [`dot`]), scaled and soft-capped, their max, `exp(score - max)` summed
/// in key order, the weighted sum of V rows in key order, divided by the sum; f32 throughout.
/// So a row's output is bit-identical whatever else is in the call and however the work is
/// split. The work is split into items of (sequence, KV head, a few query rows) that walk the
/// keys once for all the query heads of that KV head (GQA) and all their rows.
fn attend_cpu<T: Elem>(
    q: &[T],
    k: &[T],
    v: &[T],
    plan: &AttentionPlan,
    p: &AttentionParams,
    tier: Tier,
) -> Vec<f32> {
    let (nh, nkv) = (p.num_heads, p.num_kv_heads);
    let groups = nh / nkv;
    let buf = &plan.host;
    let meta = &buf[plan.n_tokens..plan.n_tokens + 3 * plan.n_seqs];
    let mut items = vec![];
    for s in 0..plan.n_seqs {
        let (q_start, q_len, ctx) = (
            meta[3 * s] as usize,
            meta[3 * s + 1] as usize,
            meta[3 * s + 2] as usize,
        );
        let keys = p.window.map_or(ctx, |w| w.min(ctx)).max(1);
        let rows = (SCORE_BUDGET / (groups * keys)).clamp(1, MAX_ROWS);
        for kvh in 0..nkv {
            let mut r0 = q_start;
            while r0 < q_start + q_len {
                let r1 = (r0 + rows).min(q_start + q_len);
                items.push(Item { s, kvh, r0, r1 });
                r0 = r1;
            }
        }
    }
    let mut out = vec![0f32; plan.n_tokens * nh * p.head_dim];
    let ptr = OutPtr(out.as_mut_ptr());
    let run = |scratch: &mut Scratch, it: &Item| {
        let o = attend_item(q, k, v, plan, p, *it, scratch, tier);
        let width = groups * p.head_dim;
        for (r, rows) in (it.r0..it.r1).zip(o.chunks_exact(width)) {
            let at = (r * nh + it.kvh * groups) * p.head_dim;
            // SAFETY: `at..at + width` lies in `out` (r < n_tokens, kvh < nkv), and it is the
            // output of row r's query heads of KV head kvh: no other item writes it.
            let dst = unsafe { std::slice::from_raw_parts_mut({ ptr }.0.add(at), width) };
            dst.copy_from_slice(rows);
        }
    };
    items
        .par_iter()
        .with_max_len(1)
        .for_each_init(Scratch::default, run);
    out
}

/// [`attend_item_impl`] compiled for the tier. The hot loops are plain loops of that
/// function (no closures: a closure is compiled on its own, without the caller's target
/// features).
#[allow(clippy::too_many_arguments)]
fn attend_item<'s, T: Elem>(
    q: &[T],
    k: &[T],
    v: &[T],
    plan: &AttentionPlan,
    p: &AttentionParams,
    it: Item,
    scratch: &'s mut Scratch,
    tier: Tier,
) -> &'s [f32] {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2<'s, T: Elem>(
            q: &[T],
            k: &[T],
            v: &[T],
            plan: &AttentionPlan,
            p: &AttentionParams,
            it: Item,
            scratch: &'s mut Scratch,
        ) -> &'s [f32] {
            attend_item_impl(q, k, v, plan, p, it, scratch)
        }
        #[target_feature(enable = "avx512f")]
        fn avx512<'s, T: Elem>(
            q: &[T],
            k: &[T],
            v: &[T],
            plan: &AttentionPlan,
            p: &AttentionParams,
            it: Item,
            scratch: &'s mut Scratch,
        ) -> &'s [f32] {
            attend_item_impl(q, k, v, plan, p, it, scratch)
        }
        match tier {
            // SAFETY: `attend_cpu`'s callers pass a tier the CPU has (`Tier::available`).
            Tier::Avx512 => return unsafe { avx512(q, k, v, plan, p, it, scratch) },
            // SAFETY: as above.
            Tier::Avx2 => return unsafe { avx2(q, k, v, plan, p, it, scratch) },
            Tier::Scalar => {}
        }
    }
    let _ = tier;
    attend_item_impl(q, k, v, plan, p, it, scratch)
}

/// One work item: returns the outputs of its rows, `[r1 - r0][groups][head_dim]`.
///
/// Each row sees keys `lo(r)..=pos(r)`; the item walks the union `lo_min..=pos_max` once.
/// A row's scores outside its own range are computed and then ignored, and their softmax
/// weights are exactly 0, so they add `0 · v = 0` to the weighted sum: the row's result is
/// the same bits as over its own keys alone.
#[inline(always)]
fn attend_item_impl<'s, T: Elem>(
    q: &[T],
    k: &[T],
    v: &[T],
    plan: &AttentionPlan,
    p: &AttentionParams,
    it: Item,
    scratch: &'s mut Scratch,
) -> &'s [f32] {
    let (nh, nkv, hd, bs) = (p.num_heads, p.num_kv_heads, p.head_dim, plan.block_size);
    let groups = nh / nkv;
    let buf = &plan.host;
    let (meta, tables) = buf[plan.n_tokens..].split_at(3 * plan.n_seqs);
    let s = it.s;
    let (q_len, ctx) = (meta[3 * s + 1] as usize, meta[3 * s + 2] as usize);
    let q_start = meta[3 * s] as usize;
    let table = &tables[s * plan.max_blocks..(s + 1) * plan.max_blocks];
    let n_rows = it.r1 - it.r0;
    // Visible keys of row r (relative to the item): lo(r)..=pos(r); both grow with r.
    let pos = |r: usize| ctx - q_len + (it.r0 + r - q_start);
    let lo = |r: usize| p.window.map_or(0, |w| (pos(r) + 1).saturating_sub(w));
    let (lo_min, pos_max) = (lo(0), pos(n_rows - 1));
    let stride = pos_max + 1 - lo_min;
    let heads = n_rows * groups;

    let Scratch {
        q: qbuf,
        scores,
        acc,
        kv,
        sums,
        slots,
    } = scratch;
    qbuf.resize(heads * hd, 0.0);
    for (r, dst) in (it.r0..it.r1).zip(qbuf.chunks_exact_mut(groups * hd)) {
        let at = (r * nh + it.kvh * groups) * hd;
        for (d, &x) in dst.iter_mut().zip(&q[at..at + groups * hd]) {
            *d = x.to_f32();
        }
    }
    // Where each key's K/V row starts (element offset), in key order.
    slots.clear();
    for j in lo_min..=pos_max {
        let slot = table[j / bs] as usize * bs + j % bs;
        slots.push((slot * nkv + it.kvh) * hd);
    }
    scores.resize(heads * stride, 0.0);
    kv.resize(hd, 0.0);

    // Scores of every head against every key of the walk.
    for (jj, &at) in slots.iter().enumerate() {
        let kr = widen(&k[at..at + hd], kv);
        let mut h = 0;
        while h + HEADS <= heads {
            let d = dot_heads(&qbuf[h * hd..(h + HEADS) * hd], kr, hd);
            for (i, &x) in d.iter().enumerate() {
                scores[(h + i) * stride + jj] = shape_score(x, p);
            }
            h += HEADS;
        }
        while h < heads {
            let x = dot(&qbuf[h * hd..(h + 1) * hd], kr);
            scores[h * stride + jj] = shape_score(x, p);
            h += 1;
        }
    }

    // Softmax weights (unnormalised) and their sums, per query head and row; 0 outside the
    // row's own keys.
    sums.resize(heads, 0.0);
    for r in 0..n_rows {
        let (a, b) = (lo(r) - lo_min, pos(r) - lo_min);
        for g in 0..groups {
            let h = r * groups + g;
            let row = &mut scores[h * stride..(h + 1) * stride];
            sums[h] = softmax_weights(&mut row[a..=b]);
            row[..a].fill(0.0);
            row[b + 1..].fill(0.0);
        }
    }

    // Weighted sum of V, in key order, for HEADS heads and CHUNK values of head_dim at a time.
    acc.clear();
    acc.resize(heads * hd, 0.0);
    let mut h = 0;
    while h < heads {
        let hn = HEADS.min(heads - h);
        let mut c = 0;
        while c < hd {
            let cw = CHUNK.min(hd - c);
            let mut a = [[0f32; CHUNK]; HEADS];
            let mut w: [&[f32]; HEADS] = [&[]; HEADS];
            for (i, wi) in w.iter_mut().enumerate() {
                *wi = &scores[(h + i.min(hn - 1)) * stride..][..stride];
            }
            if cw == CHUNK {
                // Fewer than HEADS heads left: the last one is repeated and its copies dropped.
                // Four named accumulators (not an array) so that they stay in registers.
                let [mut a0, mut a1, mut a2, mut a3] = a;
                let [w0, w1, w2, w3] = w;
                for ((((&at, &x0), &x1), &x2), &x3) in slots
                    .iter()
                    .zip(&w0[..slots.len()])
                    .zip(&w1[..slots.len()])
                    .zip(&w2[..slots.len()])
                    .zip(&w3[..slots.len()])
                {
                    let vr = widen(&v[at + c..at + c + CHUNK], &mut kv[..CHUNK]);
                    let vr: &[f32; CHUNK] = vr.try_into().expect("a full chunk");
                    for l in 0..CHUNK {
                        a0[l] += x0 * vr[l];
                        a1[l] += x1 * vr[l];
                        a2[l] += x2 * vr[l];
                        a3[l] += x3 * vr[l];
                    }
                }
                a = [a0, a1, a2, a3];
            } else {
                for (jj, &at) in slots.iter().enumerate() {
                    let vr = widen(&v[at + c..at + c + cw], &mut kv[..cw]);
                    for (ai, wi) in a[..hn].iter_mut().zip(w) {
                        let x = wi[jj];
                        for (o, &y) in ai[..cw].iter_mut().zip(vr) {
                            *o += x * y;
                        }
                    }
                }
            }
            for (i, ai) in a[..hn].iter().enumerate() {
                acc[(h + i) * hd + c..][..cw].copy_from_slice(&ai[..cw]);
            }
            c += cw;
        }
        h += hn;
    }
    for (o, &sum) in acc.chunks_exact_mut(hd).zip(sums.iter()) {
        for a in o.iter_mut() {
            *a /= sum;
        }
    }
    acc
}

/// `x ← exp(x - max x)` over a row's scores; returns the sum of the new values. The max and
/// the sum run in 16 lanes in one fixed order that depends only on the row (lane `l` takes
/// elements `l, l + 16, ...`, the lanes are then added in [`reduce_lanes`]' tree); `exp` is
/// the C library's.
#[inline(always)]
fn softmax_weights(row: &mut [f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            m[l] = m[l].max(c[l]);
        }
    }
    for (l, &x) in chunks.remainder().iter().enumerate() {
        m[l] = m[l].max(x);
    }
    let mut mx = f32::NEG_INFINITY;
    for x in m {
        mx = mx.max(x);
    }
    let mut sum = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let e = (c[l] - mx).exp();
            c[l] = e;
            sum[l] += e;
        }
    }
    for (l, x) in chunks.into_remainder().iter_mut().enumerate() {
        let e = (*x - mx).exp();
        *x = e;
        sum[l] += e;
    }
    reduce_lanes(sum)
}

/// A raw `q . k` scaled and soft-capped.
#[inline(always)]
fn shape_score(x: f32, p: &AttentionParams) -> f32 {
    let x = x * p.scale;
    match p.softcap {
        Some(c) => (x / c).tanh() * c,
        None => x,
    }
}

fn slice<'a, T>(s: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => bail!("paged-attention: {what} must be contiguous"),
    }
}

impl CustomOp3 for PagedAttention {
    fn name(&self) -> &'static str {
        "paged-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = l1.shape().clone();
        let (plan, p) = (&self.plan, &self.p);
        // One dtype: the contiguous slices of q, k and v, widened to f32 element by element.
        macro_rules! attend {
            ($q:expr, $k:expr, $v:expr) => {
                attend_cpu(
                    slice($q, l1, "q")?,
                    slice($k, l2, "k")?,
                    slice($v, l3, "v")?,
                    plan,
                    p,
                    Tier::detect(),
                )
            };
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                CpuStorage::F32(attend!(q, k, v))
            }
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => CpuStorage::BF16(
                attend!(q, k, v)
                    .into_iter()
                    .map(half::bf16::from_f32)
                    .collect(),
            ),
            (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => CpuStorage::F16(
                attend!(q, k, v)
                    .into_iter()
                    .map(half::f16::from_f32)
                    .collect(),
            ),
            (q, _, _) => bail!("paged-attention: unsupported dtype {:?}", q.dtype()),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::DType;
        use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
        const SRC: &str = include_str!("../../../kernels/paged_attention.cu");
        const WARPS: u32 = 4;
        let (plan, p) = (&self.plan, &self.p);
        let (t, nh, hd) = l1.shape().dims3()?;
        if hd > 256 {
            bail!("paged-attention: head_dim {hd} > 256 is not supported by the CUDA kernel")
        }
        if t > 65_535 {
            bail!("paged-attention: {t} query tokens in one call (at most 65,535)")
        }
        let off = |l: &Layout, what: &str| match l.contiguous_offsets() {
            Some((a, _)) => Ok(a),
            None => Err(candle_core::Error::Msg(format!(
                "paged-attention: {what} must be contiguous"
            ))),
        };
        let (o1, o2, o3) = (off(l1, "q")?, off(l2, "k")?, off(l3, "v")?);
        let dev = s1.device().clone();
        let (ps, pl) = plan.device.storage_and_layout();
        let candle_core::Storage::Cuda(ps) = &*ps else {
            bail!("paged-attention: the plan is not on the GPU")
        };
        let plan_buf = ps.as_cuda_slice::<u32>()?.slice(pl.start_offset()..);
        let cfg = LaunchConfig {
            grid_dim: (nh as u32, t as u32, 1),
            block_dim: (WARPS * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        let ints = [
            plan.n_tokens as i32,
            plan.n_seqs as i32,
            plan.max_blocks as i32,
            nh as i32,
            p.num_kv_heads as i32,
            hd as i32,
            plan.block_size as i32,
        ];
        let (scale, softcap, window) = (
            p.scale,
            p.softcap.unwrap_or(0.0),
            p.window.map_or(0, |w| w.min(i32::MAX as usize) as i32),
        );
        macro_rules! go {
            ($t:ty, $f:literal) => {{
                let q = s1.as_cuda_slice::<$t>()?.slice(o1..);
                let k = s2.as_cuda_slice::<$t>()?.slice(o2..);
                let v = s3.as_cuda_slice::<$t>()?.slice(o3..);
                // SAFETY: every element is written by the kernel (one block per token and head).
                let out = unsafe { dev.alloc::<$t>(t * nh * hd) }?;
                crate::cuda::launch!(
                    dev,
                    "cord_paged_attention",
                    SRC,
                    $f,
                    cfg,
                    [
                        &q, &k, &v, &out, &plan_buf, &ints[0], &ints[1], &ints[2], &ints[3],
                        &ints[4], &ints[5], &ints[6], &scale, &softcap, &window
                    ]
                );
                candle_core::CudaStorage::wrap_cuda_slice(out, dev)
            }};
        }
        let out = match s1.dtype() {
            DType::F32 => go!(f32, "paged_attention_f32"),
            DType::BF16 => go!(half::bf16, "paged_attention_bf16"),
            DType::F16 => go!(half::f16, "paged_attention_f16"),
            dt => bail!("paged-attention: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{SHAPES, case, params};
    use candle_core::DType;

    #[test]
    fn reference_matches_naive_f32() -> Result<()> {
        let mut n = 0;
        for (nh, nkv, hd) in [(4, 4, 8), (8, 2, 16), (6, 1, 40)] {
            for bs in [1, 4, 16] {
                for (softcap, window) in [(None, None), (Some(5.0), None), (None, Some(6))] {
                    for shapes in SHAPES {
                        let mut p = params(nh, nkv, hd);
                        // Larger scores, so the softmax is far from uniform.
                        p.scale = 3.0 / (hd as f32).sqrt();
                        p.softcap = softcap;
                        p.window = window;
                        n += 1;
                        let c = case(p, bs, shapes, n);
                        let got = c.run(DType::F32, &Device::Cpu)?;
                        let want = c.naive(|x| x);
                        assert_eq!(got.len(), want.len());
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (*g as f64 - w).abs() < 2e-5,
                                "{p:?} bs={bs} {shapes:?} elem {i}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn reference_16_bit() -> Result<()> {
        let p = params(8, 2, 64);
        for (dt, round) in [
            (
                DType::BF16,
                (|x| half::bf16::from_f32(x).to_f32()) as fn(f32) -> f32,
            ),
            (DType::F16, |x| half::f16::from_f32(x).to_f32()),
        ] {
            let c = case(p, 16, &[(3, 40), (1, 33)], 7);
            let got = c.run(dt, &Device::Cpu)?;
            let want = c.naive(round);
            for (g, w) in got.iter().zip(&want) {
                // Inputs rounded as the kernel sees them; the output is rounded once more.
                assert!(
                    (*g as f64 - w).abs() < 1e-2 * w.abs().max(0.1),
                    "{dt:?}: {g} vs {w}"
                );
            }
        }
        Ok(())
    }

    /// A query row's output is the same bits alone, beside other sequences, after more rows of
    /// its own sequence, and under any thread count: nothing depends on the rest of the call.
    #[test]
    fn rows_are_independent_of_the_batch() -> Result<()> {
        use crate::check::noise;
        let dev = Device::Cpu;
        let (nb, bs) = (64, 4);
        for (nh, nkv, hd) in [(8, 2, 40), (4, 4, 64), (6, 1, 16), (4, 2, 16), (14, 2, 64)] {
            for (softcap, window) in [(None, None), (Some(5.0), None), (None, Some(7))] {
                let mut p = params(nh, nkv, hd);
                p.softcap = softcap;
                p.window = window;
                let row = nh * hd;
                let kv_shape = (nb, bs, nkv, hd);
                let k = Tensor::from_vec(noise(nb * bs * nkv * hd, 1), kv_shape, &dev)?;
                let v = Tensor::from_vec(noise(nb * bs * nkv * hd, 2), kv_shape, &dev)?;
                // Sequence A: 40 tokens, blocks 10..20; its 40 query rows.
                let a_blocks: Vec<u32> = (10..20).collect();
                let qa = noise(40 * row, 3);
                let (b_blocks, c_blocks): (Vec<u32>, Vec<u32>) =
                    ((30..36).collect(), vec![5, 1, 60]);
                let (qb, qc) = (noise(5 * row, 4), noise(2 * row, 5));
                let seq = |q_len, ctx_len, blocks| PlanSeq {
                    q_len,
                    ctx_len,
                    blocks,
                };
                // (plan, queries, index of A's last 3 rows in the output)
                let calls: Vec<(Vec<PlanSeq>, Vec<f32>, usize)> = vec![
                    (vec![seq(3, 40, &a_blocks)], qa[37 * row..].to_vec(), 0),
                    (
                        vec![seq(1, 38, &a_blocks)],
                        qa[37 * row..38 * row].to_vec(),
                        0,
                    ),
                    (
                        vec![
                            seq(5, 21, &b_blocks),
                            seq(3, 40, &a_blocks),
                            seq(2, 9, &c_blocks),
                        ],
                        [&qb[..], &qa[37 * row..], &qc[..]].concat(),
                        5,
                    ),
                    (vec![seq(20, 40, &a_blocks)], qa[20 * row..].to_vec(), 17),
                    (vec![seq(40, 40, &a_blocks)], qa.clone(), 37),
                    (
                        vec![seq(40, 40, &a_blocks), seq(5, 21, &b_blocks)],
                        [&qa[..], &qb[..]].concat(),
                        37,
                    ),
                ];
                for dt in [DType::F32, DType::BF16] {
                    let (k, v) = (k.to_dtype(dt)?, v.to_dtype(dt)?);
                    let mut want: Option<Vec<u32>> = None;
                    for threads in [1, 3] {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .map_err(candle_core::Error::wrap)?;
                        for (i, (seqs, q, at)) in calls.iter().enumerate() {
                            let t = q.len() / row;
                            let q = Tensor::from_slice(q, (t, nh, hd), &dev)?.to_dtype(dt)?;
                            let plan = AttentionPlan::new(seqs, bs, &dev)?;
                            let o = pool.install(|| paged_attention(&q, &k, &v, &plan, &p))?;
                            // The rows at positions 37.. (one row, position 37, for call 1).
                            let n = if i == 1 { 1 } else { 3 };
                            let got: Vec<u32> = o
                                .narrow(0, *at, n)?
                                .to_dtype(DType::F32)?
                                .flatten_all()?
                                .to_vec1::<f32>()?
                                .iter()
                                .map(|x| x.to_bits())
                                .collect();
                            if i == 1 {
                                // Position 37 with a context of 38: the first of A's 3 rows.
                                let w = want.as_ref().expect("call 0 ran first");
                                assert_eq!(&got[..], &w[..row], "{p:?} {dt:?} call {i}");
                                continue;
                            }
                            match &want {
                                None => want = Some(got),
                                Some(w) => {
                                    assert_eq!(&got, w, "{p:?} {dt:?} {threads} threads, call {i}")
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every CPU tier this machine has returns the same bits as the scalar code, on head
    /// layouts that take the 4-head / 64-value fast paths and ones that take the tails.
    #[test]
    fn tiers_agree_bit_for_bit() -> Result<()> {
        let tiers: Vec<Tier> = [Tier::Avx2, Tier::Avx512]
            .into_iter()
            .filter(|t| t.available())
            .collect();
        if tiers.is_empty() {
            eprintln!("only the scalar tier on this CPU; nothing to compare");
        }
        let mut n = 0;
        for (nh, nkv, hd) in [(14, 2, 64), (8, 2, 40), (6, 3, 128), (5, 1, 72)] {
            for (softcap, window) in [(None, None), (Some(5.0), None), (None, Some(9))] {
                let mut p = params(nh, nkv, hd);
                p.scale = 3.0 / (hd as f32).sqrt();
                p.softcap = softcap;
                p.window = window;
                n += 1;
                let c = case(p, 16, &[(1, 70), (12, 40), (3, 3)], n);
                let plan = c.plan(&Device::Cpu)?;
                let want = attend_cpu(&c.q, &c.k, &c.v, &plan, &p, Tier::Scalar);
                for &tier in &tiers {
                    let got = attend_cpu(&c.q, &c.k, &c.v, &plan, &p, tier);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same && got.len() == want.len(), "{tier:?} {p:?}");
                }
                let q16: Vec<half::bf16> = c.q.iter().map(|&x| half::bf16::from_f32(x)).collect();
                let k16: Vec<half::bf16> = c.k.iter().map(|&x| half::bf16::from_f32(x)).collect();
                let v16: Vec<half::bf16> = c.v.iter().map(|&x| half::bf16::from_f32(x)).collect();
                let want = attend_cpu(&q16, &k16, &v16, &plan, &p, Tier::Scalar);
                for &tier in &tiers {
                    let got = attend_cpu(&q16, &k16, &v16, &plan, &p, tier);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "bf16 {tier:?} {p:?}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn refuses_bad_plans_and_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let blocks = [0u32, 1];
        let bad = |q_len, ctx_len| {
            AttentionPlan::new(
                &[PlanSeq {
                    q_len,
                    ctx_len,
                    blocks: &blocks,
                }],
                4,
                &dev,
            )
        };
        assert!(bad(0, 3).is_err());
        assert!(bad(4, 3).is_err());
        assert!(bad(1, 9).is_err(), "9 tokens need 3 blocks of 4");
        assert!(AttentionPlan::new(&[], 0, &dev).is_err());
        let c = case(params(4, 2, 8), 4, &[(2, 6)], 1);
        let (q, k, v) = c.tensors(DType::F32, &dev)?;
        let plan = c.plan(&dev)?;
        assert!(paged_attention(&q, &k, &v, &plan, &params(4, 4, 8)).is_err());
        assert!(paged_attention(&q.narrow(0, 0, 1)?, &k, &v, &plan, &c.p).is_err());
        assert!(
            paged_attention(&q, &k.narrow(0, 0, 2)?, &v.narrow(0, 0, 2)?, &plan, &c.p).is_err()
        );
        assert!(paged_attention(&q, &k, &v.to_dtype(DType::BF16)?, &plan, &c.p).is_err());
        paged_attention(&q, &k, &v, &plan, &c.p)?;
        Ok(())
    }
}

/// The CUDA kernels against their CPU references (runs only in a `cuda` build on a host with a
/// GPU; `cord bench kernels --device cuda:0` runs the same checks from the binary).
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests {
    use crate::check::parity;
    use candle_core::{Device, Result};

    #[test]
    fn cuda_matches_cpu() -> Result<()> {
        let Ok(gpu) = Device::new_cuda(0) else {
            eprintln!("no usable CUDA device; skipping");
            return Ok(());
        };
        let results = parity(&gpu)?;
        let bad: Vec<_> = results.iter().filter(|r| !r.ok).collect();
        assert!(bad.is_empty(), "{bad:#?}");
        Ok(())
    }
}
