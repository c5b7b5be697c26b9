//! `y = x Wᵀ` for Q4_K and Q6_K weights `W` `[n, k]` (GGUF's k-quants, read in place) and f32
//! activations `x` `[m, k]`, for the few rows of a decode step.
//!
//! candle 0.11 runs Q4_K at batch 1 through its repacked tiles, which are built for several
//! activation rows, and Q6_K at batch 1 through its generic dot product (its repacked Q6_K
//! kernel needs `m > 1`). A profile of Qwen2.5-Coder-1.5B decoding one sequence put 48 % of the
//! time in the Q4_K tile and 15 % in the generic Q6_K dot. This op is a plain GEMV over the
//! file's own blocks, the layout llama.cpp reads at batch 1:
//!
//! - each activation row is quantized once per call to int8 blocks of 256 (one f32 scale each,
//!   [`QuantizedRows`]) with the sum of every 16 values, which the Q4_K minimums and the Q6_K
//!   offset of 32 need;
//! - a rayon task takes a run of output columns; for each column and block of 256 it unpacks the
//!   weights once into registers and multiplies them with every activation row (`u8 × i8` pair
//!   products, `vpmaddubsw`), weighting each sub-block by its scale as a 16-bit multiply-add.
//!
//! Tiers: AVX2 (+ FMA, F16C) and the scalar reference; the AVX-512 tier runs the AVX2 code (no
//! 512-bit build was written on a machine that could test it). The integer part of a block is
//! exact (i32); the f32 part follows one fixed order on every tier: 8 lanes, lane `l` holding
//! values `4l .. 4l + 4` of each run of 32, `acc[l] = fma(lane, d_x · d, acc[l])` per block (for
//! Q4_K also 4 lanes of minimums, `fma(·, -(d_x · dmin), ·)`), folded once per output
//! (`column_q4k_scalar` spells it out). So the tiers agree bit for bit with the scalar
//! reference on any machine, and a row's result does not depend on the other rows. It does
//! differ in the last bits from candle's kernels, which sum in another order: see
//! `cord_models::layers::KQUANT_MAX_ROWS` for where each runs.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, bail};
use rayon::prelude::*;

use super::q8_0::Tier;
use super::{SendPtr, quantize_block};

/// Values per k-quant block.
pub const QK_K: usize = 256;
/// Most activation rows the kernels hold at once; larger `m` runs in chunks.
pub const MAX_ROWS: usize = 4;

/// Which k-quant the weights are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KQuant {
    /// 4-bit values in sub-blocks of 32 with 6-bit scales and minimums (144 bytes per block).
    Q4K,
    /// 6-bit values in sub-blocks of 16 with 8-bit scales (210 bytes per block).
    Q6K,
}

impl KQuant {
    /// The k-quant of a GGUF type, if this op runs it.
    pub fn of(dtype: GgmlDType) -> Option<KQuant> {
        match dtype {
            GgmlDType::Q4K => Some(KQuant::Q4K),
            GgmlDType::Q6K => Some(KQuant::Q6K),
            _ => None,
        }
    }

    /// Bytes of one block of 256 values.
    pub fn block_bytes(self) -> usize {
        match self {
            KQuant::Q4K => 144,
            KQuant::Q6K => 210,
        }
    }
}

/// Activation rows quantized to int8 blocks of 256 (`round(x / (amax / 127))`, scale in f32),
/// with the sum of each 16 values.
pub struct QuantizedRows {
    k: usize,
    nb: usize,
    /// `[m, k]`.
    qs: Vec<i8>,
    /// `[m, nb]` scales.
    d: Vec<f32>,
    /// `[m, k / 16]`.
    bsum: Vec<i16>,
}

impl QuantizedRows {
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        let nb = k / QK_K;
        let mut a = QuantizedRows {
            k,
            nb,
            qs: vec![0; m * k],
            d: vec![0.0; m * nb],
            bsum: vec![0; m * k / 16],
        };
        let blocks = x
            .chunks_exact(QK_K)
            .zip(a.qs.chunks_exact_mut(QK_K))
            .zip(a.d.iter_mut().zip(a.bsum.chunks_exact_mut(QK_K / 16)));
        for ((xs, qs), (d, bsum)) in blocks {
            *d = quantize_block(xs, qs);
            for (s, qs) in bsum.iter_mut().zip(qs.chunks_exact(16)) {
                *s = qs.iter().map(|&q| q as i16).sum();
            }
        }
        a
    }

    /// Block `b` of row `r`: 256 values, scale, 16 sums of 16.
    fn block(&self, r: usize, b: usize) -> (&[i8; QK_K], f32, &[i16; 16]) {
        let qs = &self.qs[r * self.k + b * QK_K..][..QK_K];
        let bs = &self.bsum[(r * self.nb + b) * 16..][..16];
        (
            qs.try_into().expect("256 values"),
            self.d[r * self.nb + b],
            bs.try_into().expect("16 sums"),
        )
    }
}

/// `dst[m, n] = x[m, k] Wᵀ` for the raw GGUF bytes `w` of a k-quant tensor `[n, k]`, with the
/// given tier; an error when this CPU lacks it or the sizes disagree.
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    tier: Tier,
    kind: KQuant,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
    dst: &mut [f32],
) -> Result<()> {
    // The AVX-512 tier runs the AVX2 kernels (see `column`).
    if !tier.available() || (tier == Tier::Avx512Vnni && !Tier::Avx2.available()) {
        bail!("k-quant gemv: this CPU has no {tier:?}")
    }
    if k == 0 || !k.is_multiple_of(QK_K) {
        bail!("k-quant gemv: k = {k} is not a positive multiple of {QK_K}")
    }
    let nb = k / QK_K;
    let row_bytes = nb * kind.block_bytes();
    if w.len() != n * row_bytes {
        bail!(
            "k-quant gemv: {} weight bytes for {kind:?} [{n}, {k}], expected {}",
            w.len(),
            n * row_bytes
        )
    }
    if x.len() != m * k || dst.len() != m * n {
        bail!(
            "k-quant gemv: x has {} values and dst {} for m = {m}, k = {k}, n = {n}",
            x.len(),
            dst.len()
        )
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let a = QuantizedRows::new(x, m, k);
    // At least ~2^17 weight bytes per rayon task: small projections stay on one thread.
    let cols_per_task = (1usize << 17).div_ceil(row_bytes).clamp(1, n);
    let out = SendPtr(dst.as_mut_ptr());
    (0..n.div_ceil(cols_per_task))
        .into_par_iter()
        .for_each(|t| {
            let c0 = t * cols_per_task;
            let c1 = (c0 + cols_per_task).min(n);
            let rows = &w[c0 * row_bytes..c1 * row_bytes];
            let mut vals = vec![0f32; (c1 - c0) * MAX_ROWS];
            let mut r0 = 0;
            while r0 < m {
                let mt = MAX_ROWS.min(m - r0);
                let vals = &mut vals[..(c1 - c0) * mt];
                columns(tier, kind, rows, row_bytes, &a, r0, mt, vals);
                for (c, v) in vals.chunks_exact(mt).enumerate() {
                    for (r, v) in v.iter().enumerate() {
                        // SAFETY: task `t` alone writes columns c0..c1 of every row, and
                        // (r0 + r) * n + c0 + c < m * n = dst.len().
                        unsafe { *out.get().add((r0 + r) * n + c0 + c) = *v };
                    }
                }
                r0 += mt;
            }
        });
    Ok(())
}

/// The output columns of the weight rows `rows` (each `row_bytes` long) for activation rows
/// `r0 .. r0 + mt`: `out[c * mt + r]`.
#[allow(clippy::too_many_arguments)]
fn columns(
    tier: Tier,
    kind: KQuant,
    rows: &[u8],
    row_bytes: usize,
    a: &QuantizedRows,
    r0: usize,
    mt: usize,
    out: &mut [f32],
) {
    debug_assert!((1..=MAX_ROWS).contains(&mt) && out.len() * row_bytes == rows.len() * mt);
    match tier {
        Tier::Scalar => {
            for (wrow, out) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(mt)) {
                match kind {
                    KQuant::Q4K => column_q4k_scalar(wrow, a, r0, out),
                    KQuant::Q6K => column_q6k_scalar(wrow, a, r0, out),
                }
            }
        }
        // The AVX-512 machines run the 256-bit kernels: there is no 512-bit build of this op
        // (none was written on a machine that could run it, and untested code is not shipped).
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul_with` checked `available()` (AVX2, FMA, F16C); each row of `rows` holds
        // whole blocks and activation rows `r0 .. r0 + mt` exist (caller).
        Tier::Avx512Vnni | Tier::Avx2 => unsafe {
            macro_rules! go {
                ($f:ident) => {
                    match mt {
                        1 => x86::$f::<1>(rows, row_bytes, a, r0, out),
                        2 => x86::$f::<2>(rows, row_bytes, a, r0, out),
                        3 => x86::$f::<3>(rows, row_bytes, a, r0, out),
                        _ => x86::$f::<4>(rows, row_bytes, a, r0, out),
                    }
                };
            }
            match kind {
                KQuant::Q4K => go!(q4k_avx2),
                KQuant::Q6K => go!(q6k_avx2),
            }
        },
        #[cfg(not(target_arch = "x86_64"))]
        Tier::Avx512Vnni | Tier::Avx2 => unreachable!("not available"),
    }
}

/// The 8 six-bit scales and 8 six-bit minimums of a Q4_K block (ggml's `get_scale_min_k4`).
#[inline(always)]
fn q4k_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0xF) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The sum every tier ends with: the 8 block-accumulator lanes folded as
/// `s[i] = acc[i] + acc[i + 4]`, plus the 4 minimum lanes, then `(t0 + t2) + (t1 + t3)`.
#[inline(always)]
fn fold(acc: &[f32; 8], accm: &[f32; 4]) -> f32 {
    let t: [f32; 4] = std::array::from_fn(|i| (acc[i] + acc[i + 4]) + accm[i]);
    (t[0] + t[2]) + (t[1] + t[3])
}

/// The reference for Q4_K (144-byte blocks: `d` f16, `dmin` f16, 12 bytes of 6-bit scales and
/// minimums, 128 bytes of nibbles: values `64 j + v` are the low nibbles of bytes `32 j + v`,
/// values `64 j + 32 + v` their high nibbles).
///
/// Integer lane `l` (0..8) of a block collects values `4l .. 4l + 4` of every run of 32, each
/// run weighted by its scale; each block adds `lane × (d_x · d)` to an f32 lane. The minimums
/// go to 4 lanes, lane `l` taking sub-blocks `2l` and `2l + 1`, weighted by `-(d_x · dmin)`.
/// This is the order the SIMD kernels compute in, so every tier gives the same bits.
fn column_q4k_scalar(wrow: &[u8], a: &QuantizedRows, r0: usize, out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        let (mut acc, mut accm) = ([0f32; 8], [0f32; 4]);
        for (b, blk) in wrow.chunks_exact(144).enumerate() {
            let (x, dx, bsum) = a.block(r0 + r, b);
            let (sc, mn) = q4k_scales(&blk[4..16]);
            let qs = &blk[16..144];
            let mut lane = [0i32; 8];
            for j in 0..4 {
                for (l, lane) in lane.iter_mut().enumerate() {
                    let (mut lo, mut hi) = (0i32, 0i32);
                    for v in 4 * l..4 * l + 4 {
                        let q = qs[32 * j + v];
                        lo += (q & 15) as i32 * x[64 * j + v] as i32;
                        hi += (q >> 4) as i32 * x[64 * j + 32 + v] as i32;
                    }
                    *lane += sc[2 * j] as i32 * lo + sc[2 * j + 1] as i32 * hi;
                }
            }
            let d = dx * f16_at(blk, 0);
            for (acc, lane) in acc.iter_mut().zip(lane) {
                *acc = (lane as f32).mul_add(d, *acc);
            }
            let dmin = -(dx * f16_at(blk, 2));
            for (l, accm) in accm.iter_mut().enumerate() {
                let s32 = |s: usize| bsum[2 * s] as i32 + bsum[2 * s + 1] as i32;
                let p = mn[2 * l] as i32 * s32(2 * l) + mn[2 * l + 1] as i32 * s32(2 * l + 1);
                *accm = (p as f32).mul_add(dmin, *accm);
            }
        }
        *o = fold(&acc, &accm);
    }
}

/// The reference for Q6_K (210-byte blocks: 128 bytes of low nibbles, 64 of high bit pairs,
/// 16 i8 scales, `d` f16; see ggml's `dequantize_row_q6_K`).
///
/// Lane `l` collects values `4l .. 4l + 4` of every run of 32 as `(q - 32) · x`, weighted by
/// the scale of its 16 values; each block adds `lane × (d_x · d)` to an f32 lane.
fn column_q6k_scalar(wrow: &[u8], a: &QuantizedRows, r0: usize, out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        let mut acc = [0f32; 8];
        for (b, blk) in wrow.chunks_exact(210).enumerate() {
            let (x, dx, _) = a.block(r0 + r, b);
            let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
            let mut lane = [0i32; 8];
            for h in 0..2 {
                let (ql, qh) = (&ql[64 * h..], &qh[32 * h..]);
                for t in 0..4 {
                    for (l, lane) in lane.iter_mut().enumerate() {
                        let mut p = 0i32;
                        for v in 4 * l..4 * l + 4 {
                            let q = match t {
                                0 => (ql[v] & 15) | ((qh[v] & 3) << 4),
                                1 => (ql[v + 32] & 15) | (((qh[v] >> 2) & 3) << 4),
                                2 => (ql[v] >> 4) | (((qh[v] >> 4) & 3) << 4),
                                _ => (ql[v + 32] >> 4) | (((qh[v] >> 6) & 3) << 4),
                            };
                            p += (q as i32 - 32) * x[128 * h + 32 * t + v] as i32;
                        }
                        *lane += sc[8 * h + 2 * t + l / 4] as i8 as i32 * p;
                    }
                }
            }
            let d = dx * f16_at(blk, 208);
            for (acc, lane) in acc.iter_mut().zip(lane) {
                *acc = (lane as f32).mul_add(d, *acc);
            }
        }
        *o = fold(&acc, &[0.0; 4]);
    }
}

/// k-quant weights as a candle op: `[.., k]` f32 → `[.., n]` (CPU only). Reads the tensor's
/// own bytes on every call; nothing is copied at load.
#[derive(Debug, Clone)]
pub struct KQuantGemv {
    kind: KQuant,
    n: usize,
    k: usize,
    w: Arc<QTensor>,
}

impl KQuantGemv {
    /// The op for a CPU k-quant tensor `[n, k]`; `None` when this op does not run its type or
    /// shape.
    pub fn new(w: Arc<QTensor>) -> Option<Self> {
        let kind = KQuant::of(w.dtype())?;
        let &[n, k] = w.shape().dims() else {
            return None;
        };
        if !w.device().is_cpu() || k == 0 || !k.is_multiple_of(QK_K) {
            return None;
        }
        Some(KQuantGemv { kind, n, k, w })
    }

    pub fn kind(&self) -> KQuant {
        self.kind
    }

    /// `dst[m, n] = x[m, k] Wᵀ` with the process's tier ([`Tier::detect`]).
    pub fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) -> Result<()> {
        let data = self.w.data()?;
        matmul_with(Tier::detect(), self.kind, &data, self.n, self.k, x, m, dst)
    }
}

impl CustomOp1 for KQuantGemv {
    fn name(&self) -> &'static str {
        "cord-kquant-gemv"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        super::matmul_fwd(
            "k-quant gemv",
            storage,
            layout,
            (self.k, self.n),
            |x, m, dst| self.matmul(x, m, dst),
        )
    }
}

#[cfg(target_arch = "x86_64")]
// Several per-row arrays (accumulators, lanes) are indexed by the row in step.
#[allow(clippy::needless_range_loop)]
mod x86 {
    //! ggml's AVX2 k-quant dot products (`ggml_vec_dot_q4_K_q8_K`, `..._q6_K_q8_K`), for up to
    //! 4 activation rows per weight row. No closures in these functions' loops: a closure is
    //! compiled without the enclosing `#[target_feature]` (see `paged_attention.rs`).
    use super::{QK_K, QuantizedRows};
    use std::arch::x86_64::*;

    /// `pshufb` masks that broadcast 16-bit lane `i` of a 128-bit vector to all 8 lanes.
    const fn shuffle_mask(i: usize) -> [u8; 16] {
        let mut m = [0u8; 16];
        let mut k = 0;
        while k < 8 {
            m[2 * k] = 2 * i as u8;
            m[2 * k + 1] = 2 * i as u8 + 1;
            k += 1;
        }
        m
    }
    const BCAST: [[u8; 16]; 8] = [
        shuffle_mask(0),
        shuffle_mask(1),
        shuffle_mask(2),
        shuffle_mask(3),
        shuffle_mask(4),
        shuffle_mask(5),
        shuffle_mask(6),
        shuffle_mask(7),
    ];

    /// [`super::fold`] on registers.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn fold(acc: __m256, accm: __m128) -> f32 {
        let t = _mm_add_ps(
            _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)),
            accm,
        );
        let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
        _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)))
    }

    /// Two f16 at `p` as f32 lanes 0 and 1.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn f16x2(p: *const u8) -> __m128 {
        // SAFETY: caller passes 4 readable bytes.
        _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe {
            (p as *const i32).read_unaligned()
        }))
    }

    /// Q4_K for up to 4 activation rows, one weight row at a time: `out[r]` for
    /// weight row `c` of `rows`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4k_avx2<const MT: usize>(
        rows: &[u8],
        row_bytes: usize,
        a: &QuantizedRows,
        r0: usize,
        out: &mut [f32],
    ) {
        const KMASK1: u32 = 0x3f3f_3f3f;
        const KMASK2: u32 = 0x0f0f_0f0f;
        const KMASK3: u32 = 0x0303_0303;
        let m4 = _mm256_set1_epi8(15);
        let nb = row_bytes / 144;
        for (wrow, out) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(MT)) {
            let mut acc = [_mm256_setzero_ps(); MT];
            let mut accm = [_mm_setzero_ps(); MT];
            for b in 0..nb {
                let mut lanes = [_mm256_setzero_si256(); MT];
                // SAFETY: block b: d, dmin at 0, scales at 4..16, nibbles at 16..144.
                let (dd, u) = unsafe {
                    let p = wrow.as_ptr().add(144 * b);
                    let u = p.add(4) as *const u32;
                    (
                        f16x2(p),
                        [
                            u.read_unaligned(),
                            u.add(1).read_unaligned(),
                            u.add(2).read_unaligned(),
                        ],
                    )
                };
                // ggml's unpacking of the 6-bit scales (bytes 0..8), minimums (8..16).
                let u3 = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
                let u1 = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
                let u2 = u[1] & KMASK1;
                let u0 = u[0] & KMASK1;
                let sm =
                    _mm256_cvtepu8_epi16(_mm_set_epi32(u3 as i32, u2 as i32, u1 as i32, u0 as i32));
                let mins = _mm256_extracti128_si256(sm, 1);
                let sc = _mm256_castsi256_si128(sm);
                let scales = _mm256_set_m128i(sc, sc);
                for j in 0..4 {
                    // SAFETY: constant masks.
                    let (b_lo, b_hi) = unsafe {
                        (
                            _mm256_broadcastsi128_si256(_mm_loadu_si128(
                                BCAST[2 * j].as_ptr() as *const _
                            )),
                            _mm256_broadcastsi128_si256(_mm_loadu_si128(
                                BCAST[2 * j + 1].as_ptr() as *const _
                            )),
                        )
                    };
                    let s_lo = _mm256_shuffle_epi8(scales, b_lo);
                    let s_hi = _mm256_shuffle_epi8(scales, b_hi);
                    // SAFETY: 32 of the block's nibble bytes.
                    let q = unsafe {
                        _mm256_loadu_si256(wrow.as_ptr().add(144 * b + 16 + 32 * j) as *const _)
                    };
                    let lo = _mm256_and_si256(q, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                    for r in 0..MT {
                        let x =
                            a.qs.as_ptr()
                                .wrapping_add((r0 + r) * a.k + b * QK_K + 64 * j);
                        // SAFETY: 64 values of row r0 + r, block b.
                        let (x0, x1) = unsafe {
                            (
                                _mm256_loadu_si256(x as *const _),
                                _mm256_loadu_si256(x.add(32) as *const _),
                            )
                        };
                        let p0 = _mm256_madd_epi16(s_lo, _mm256_maddubs_epi16(lo, x0));
                        let p1 = _mm256_madd_epi16(s_hi, _mm256_maddubs_epi16(hi, x1));
                        lanes[r] = _mm256_add_epi32(lanes[r], _mm256_add_epi32(p0, p1));
                    }
                }
                for r in 0..MT {
                    let i = (r0 + r) * a.nb + b;
                    let dx = _mm_set1_ps(a.d[i]);
                    // SAFETY: the row's 16 sums of block b.
                    let bs = unsafe {
                        let p = a.bsum.as_ptr().add(16 * i);
                        _mm_hadd_epi16(
                            _mm_loadu_si128(p as *const _),
                            _mm_loadu_si128(p.add(8) as *const _),
                        )
                    };
                    let scaled = _mm_mul_ps(dx, dd);
                    // lane 0: d_x · d, lane 1: d_x · dmin
                    let d = _mm256_broadcastss_ps(scaled);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes[r]), d, acc[r]);
                    let prod = _mm_cvtepi32_ps(_mm_madd_epi16(mins, bs));
                    let dmin = _mm_shuffle_ps(scaled, scaled, 0b01_01_01_01);
                    let dmin = _mm_xor_ps(dmin, _mm_set1_ps(-0.0));
                    accm[r] = _mm_fmadd_ps(prod, dmin, accm[r]);
                }
            }
            for r in 0..MT {
                out[r] = fold(acc[r], accm[r]);
            }
        }
    }

    /// Q6_K, as [`q4k_avx2`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q6k_avx2<const MT: usize>(
        rows: &[u8],
        row_bytes: usize,
        a: &QuantizedRows,
        r0: usize,
        out: &mut [f32],
    ) {
        let m4 = _mm256_set1_epi8(15);
        let m2 = _mm256_set1_epi8(3);
        let m32 = _mm256_set1_epi8(32);
        let nb = row_bytes / 210;
        for (wrow, out) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(MT)) {
            let mut acc = [_mm256_setzero_ps(); MT];
            for b in 0..nb {
                // SAFETY: block b: the 16 scales at 192..208 and d at 208..210 (read as 4 bytes
                // from 206).
                let (scales, dw) = unsafe {
                    let p = wrow.as_ptr().add(210 * b);
                    let d = _mm_cvtph_ps(_mm_cvtsi32_si128(
                        (p.add(206) as *const i32).read_unaligned(),
                    ));
                    (
                        _mm_loadu_si128(p.add(192) as *const _),
                        _mm_shuffle_ps(d, d, 0b01_01_01_01),
                    )
                };
                let mut lanes = [_mm256_setzero_si256(); MT];
                for h in 0..2 {
                    // SAFETY: ql 64h .. 64h + 64 and qh 128 + 32h .. + 32 of block b.
                    let (l0, l1, qh) = unsafe {
                        let p = wrow.as_ptr().add(210 * b);
                        (
                            _mm256_loadu_si256(p.add(64 * h) as *const _),
                            _mm256_loadu_si256(p.add(64 * h + 32) as *const _),
                            _mm256_loadu_si256(p.add(128 + 32 * h) as *const _),
                        )
                    };
                    let q = [
                        _mm256_or_si256(
                            _mm256_and_si256(l0, m4),
                            _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(l1, m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4),
                        ),
                    ];
                    for (t, q) in q.into_iter().enumerate() {
                        let s = 8 * h + 2 * t;
                        // SAFETY: constant masks. Scale s for lanes 0..4, s + 1 for 4..8.
                        let scale = unsafe {
                            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(
                                scales,
                                _mm_loadu_si128(PAIR[s / 2].as_ptr() as *const _),
                            ))
                        };
                        for r in 0..MT {
                            let x =
                                a.qs.as_ptr()
                                    .wrapping_add((r0 + r) * a.k + b * QK_K + 16 * s);
                            // SAFETY: 32 values of row r0 + r, block b.
                            let x = unsafe { _mm256_loadu_si256(x as *const _) };
                            let p16 = _mm256_sub_epi16(
                                _mm256_maddubs_epi16(q, x),
                                _mm256_maddubs_epi16(m32, x),
                            );
                            lanes[r] = _mm256_add_epi32(lanes[r], _mm256_madd_epi16(scale, p16));
                        }
                    }
                }
                for r in 0..MT {
                    let dx = _mm_set1_ps(a.d[(r0 + r) * a.nb + b]);
                    let d = _mm256_broadcastss_ps(_mm_mul_ps(dx, dw));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes[r]), d, acc[r]);
                }
            }
            for r in 0..MT {
                out[r] = fold(acc[r], _mm_setzero_ps());
            }
        }
    }

    /// `pshufb` masks that put i8 scale `2i` in bytes 0..8 and `2i + 1` in bytes 8..16.
    const fn pair_mask(i: usize) -> [u8; 16] {
        let mut m = [0u8; 16];
        let mut k = 0;
        while k < 16 {
            m[k] = (2 * i + k / 8) as u8;
            k += 1;
        }
        m
    }
    const PAIR: [[u8; 16]; 8] = [
        pair_mask(0),
        pair_mask(1),
        pair_mask(2),
        pair_mask(3),
        pair_mask(4),
        pair_mask(5),
        pair_mask(6),
        pair_mask(7),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A k-quant tensor `[n, k]` of smooth random-ish weights, quantized by candle.
    fn weights(kind: KQuant, n: usize, k: usize, seed: u64) -> (Arc<QTensor>, Vec<f32>) {
        let mut s = seed;
        let vals: Vec<f32> = (0..n * k)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                u * (1.0 + (i % 7) as f32 * 0.3)
            })
            .collect();
        let t = Tensor::from_vec(vals, (n, k), &Device::Cpu).unwrap();
        let dt = match kind {
            KQuant::Q4K => GgmlDType::Q4K,
            KQuant::Q6K => GgmlDType::Q6K,
        };
        let q = QTensor::quantize(&t, dt).unwrap();
        let deq = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (Arc::new(q), deq)
    }

    fn activations(m: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..m * k)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn tiers_agree_bit_for_bit() {
        for kind in [KQuant::Q4K, KQuant::Q6K] {
            let (n, k) = (37, 512);
            let (w, _) = weights(kind, n, k, 7);
            let data = w.data().unwrap();
            for m in [1, 2, 3, 4, 5, 9] {
                let x = activations(m, k, m as u64);
                let mut want = vec![0f32; m * n];
                matmul_with(Tier::Scalar, kind, &data, n, k, &x, m, &mut want).unwrap();
                for tier in [Tier::Avx2, Tier::Avx512Vnni] {
                    if !tier.available() {
                        eprintln!("{tier:?} not on this CPU: skipped");
                        continue;
                    }
                    let mut got = vec![0f32; m * n];
                    matmul_with(tier, kind, &data, n, k, &x, m, &mut got).unwrap();
                    let same = want
                        .iter()
                        .zip(&got)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{kind:?} {tier:?} m = {m}: {:?} vs {:?}",
                        &got[..4],
                        &want[..4]
                    );
                }
            }
        }
    }

    /// Against the dequantized weights in f64: the only error left is the activations' int8
    /// rounding (at most half a step of `amax / 127` per value, random in sign), so the error of
    /// a dot product is bounded by `Σ |w| · amax / 254`; this checks a quarter of that bound
    /// for the RMS (random signs give about `√k` of the `k` terms) and the bound itself per
    /// value.
    #[test]
    fn matches_the_dequantized_weights() {
        for kind in [KQuant::Q4K, KQuant::Q6K] {
            let (n, k, m) = (19, 768, 3);
            let (w, deq) = weights(kind, n, k, 11);
            let x = activations(m, k, 5);
            let mut got = vec![0f32; m * n];
            matmul_with(
                Tier::Scalar,
                kind,
                &w.data().unwrap(),
                n,
                k,
                &x,
                m,
                &mut got,
            )
            .unwrap();
            let (mut se, mut sb) = (0f64, 0f64);
            for r in 0..m {
                for c in 0..n {
                    let (xr, wc) = (&x[r * k..][..k], &deq[c * k..][..k]);
                    let exact: f64 = xr.iter().zip(wc).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let mut bound = 0f64;
                    for (xb, wb) in xr.chunks(QK_K).zip(wc.chunks(QK_K)) {
                        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                        bound += wb.iter().map(|v| v.abs() as f64).sum::<f64>() * amax / 254.0;
                    }
                    let err = (got[r * n + c] as f64 - exact).abs();
                    assert!(
                        err <= bound,
                        "{kind:?} r {r} c {c}: error {err} > bound {bound}"
                    );
                    se += err * err;
                    sb += bound * bound;
                }
            }
            assert!(
                se.sqrt() <= 0.25 * sb.sqrt(),
                "{kind:?}: rms error {se} vs bound {sb}"
            );
        }
    }

    #[test]
    fn nan_activations_stay_nan_and_sizes_are_checked() {
        let (n, k) = (3, 256);
        let (w, _) = weights(KQuant::Q4K, n, k, 1);
        let data = w.data().unwrap();
        let mut x = activations(1, k, 2);
        x[17] = f32::NAN;
        let mut got = vec![0f32; n];
        matmul_with(Tier::detect(), KQuant::Q4K, &data, n, k, &x, 1, &mut got).unwrap();
        assert!(got.iter().all(|v| v.is_nan()));
        let err = matmul_with(Tier::Scalar, KQuant::Q6K, &data, n, k, &x, 1, &mut got);
        assert!(err.is_err(), "Q4_K bytes read as Q6_K must be refused");
    }
}
