//! `y = x Wᵀ` for Q8_0 weights `W` `[n, k]` and f32 activations `x` `[m, k]`: a repacked int8
//! GEMM for every `k` that is a multiple of 32.
//!
//! candle's fast x86 path (repacked tiles) only takes Q8_0 when `k` is a multiple of 256 and
//! never on plain AVX2; otherwise it quantizes each activation row and runs one dot product per
//! row and output column, so a batch of `m` rows reads every weight block `m` times. Here:
//!
//! - at load, the weights are repacked into tiles of [`NT`] output columns × 32 values
//!   ([`Tile`]): per group of 4 `k`-values, 16 columns × 4 bytes, i.e. exactly one 512-bit
//!   `vpdpbusd` operand, stored as `w + 128` (`u8`) so that `vpdpbusd`'s unsigned operand is the
//!   weight and the signed one the activation;
//! - each activation row is quantized once per call to int8 blocks of 32 (ggml's Q8_0 rounding,
//!   the scale kept in f32), with `128 · Σq` per block to remove the `+128` offset;
//! - each rayon task takes one tile of 16 columns and walks all rows in chunks of up to
//!   [`Tier::rows_per_tile`] rows: a weight block is loaded into registers once per row chunk and
//!   the tile's blocks stay in L1/L2 for the next chunk, so the weight memory traffic no longer
//!   grows with the batch.
//!
//! Every tier computes the same integer dot products exactly (i32) and then the same f32
//! operations in the same order (`scale = d_w · d_x`, `acc = fma(isum, scale, acc)`, block by
//! block), so the tiers agree bit for bit with the scalar reference.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, bail};

use super::{SendPtr, quantize_block};
use rayon::prelude::*;

/// Values per Q8_0 block.
pub const QK: usize = 32;
/// Output columns per tile.
pub const NT: usize = 16;
/// Bytes of one GGUF / candle Q8_0 block: f16 scale + 32 × i8.
const BLOCK_BYTES: usize = 2 + QK;

/// One block (32 `k`-values) of [`NT`] output columns.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Tile {
    /// `[k4 group (8)][column (16)][4 bytes]`, each byte `w + 128`.
    qs: [u8; QK * NT],
    /// Per-column scale (0 for the padding columns of the last tile).
    d: [f32; NT],
}

/// Q8_0 weights `[n, k]` repacked into column tiles: `tiles[t * kb + b]` is block `b` of
/// columns `16 t .. 16 t + 16`.
pub struct PackedQ8_0 {
    n: usize,
    k: usize,
    tiles: Vec<Tile>,
}

impl std::fmt::Debug for PackedQ8_0 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedQ8_0")
            .field("n", &self.n)
            .field("k", &self.k)
            .finish_non_exhaustive()
    }
}

impl PackedQ8_0 {
    /// Repacks the raw bytes of a Q8_0 tensor `[n, k]` (row-major blocks of 34 bytes: f16 scale,
    /// 32 × i8), as `candle_core::quantized::QTensor::data` returns them.
    ///
    /// A stored `-128` is read as `-127` (the AVX2 tier's sign trick needs `|w| ≤ 127`); Q8_0
    /// quantizers (ggml's and candle's: `round(x / (amax / 127))`) never write `-128`.
    pub fn from_q8_0_bytes(data: &[u8], n: usize, k: usize) -> Result<Self> {
        if k == 0 || !k.is_multiple_of(QK) {
            bail!("q8_0 gemm: k = {k} is not a positive multiple of {QK}")
        }
        let kb = k / QK;
        if data.len() != n * kb * BLOCK_BYTES {
            bail!(
                "q8_0 gemm: {} bytes for [{n}, {k}], expected {}",
                data.len(),
                n * kb * BLOCK_BYTES
            )
        }
        let ntiles = n.div_ceil(NT);
        let empty = Tile {
            qs: [128; QK * NT],
            d: [0.0; NT],
        };
        let mut tiles = vec![empty; ntiles * kb];
        for c in 0..n {
            let (t, j) = (c / NT, c % NT);
            for b in 0..kb {
                let blk = &data[(c * kb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
                let tile = &mut tiles[t * kb + b];
                tile.d[j] = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                for (i, &q) in blk[2..].iter().enumerate() {
                    let q = (q as i8).max(-127);
                    tile.qs[(i / 4) * NT * 4 + j * 4 + i % 4] = (q as i16 + 128) as u8;
                }
            }
        }
        Ok(PackedQ8_0 { n, k, tiles })
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held by the repacked weights.
    pub fn size_in_bytes(&self) -> usize {
        self.tiles.len() * std::mem::size_of::<Tile>()
    }

    /// `dst[m, n] = x[m, k] Wᵀ` with the process's tier ([`Tier::detect`]).
    pub fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) -> Result<()> {
        self.matmul_with(Tier::detect(), x, m, dst)
    }

    /// `dst[m, n] = x[m, k] Wᵀ` with the given tier; an error when this CPU lacks it.
    pub fn matmul_with(&self, tier: Tier, x: &[f32], m: usize, dst: &mut [f32]) -> Result<()> {
        if !tier.available() {
            bail!("q8_0 gemm: this CPU has no {tier:?}")
        }
        let (n, k) = (self.n, self.k);
        if x.len() != m * k || dst.len() != m * n {
            bail!(
                "q8_0 gemm: x has {} values and dst {} for m = {m}, k = {k}, n = {n}",
                x.len(),
                dst.len()
            )
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let a = QuantizedRows::new(x, m, k);
        let kb = k / QK;
        let ntiles = n.div_ceil(NT);
        // At least ~2^18 multiply-adds per rayon task: tiny projections stay on one thread.
        let min_len = (1usize << 18).div_ceil(m * k * NT).max(1);
        let out = SendPtr(dst.as_mut_ptr());
        (0..ntiles)
            .into_par_iter()
            .with_min_len(min_len)
            .for_each(|t| {
                let tiles = &self.tiles[t * kb..(t + 1) * kb];
                let cols = NT.min(n - t * NT);
                let step = tier.rows_per_tile();
                let mut buf = [[0f32; NT]; MAX_MT];
                let mut r0 = 0;
                while r0 < m {
                    let mt = step.min(m - r0);
                    tier.run(tiles, &a, r0, &mut buf[..mt]);
                    for (r, row) in buf[..mt].iter().enumerate() {
                        // SAFETY: task `t` alone writes columns 16t..16t+cols of each row, and
                        // (r0 + r) * n + 16t + cols <= m * n = dst.len().
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                row.as_ptr(),
                                out.get().add((r0 + r) * n + t * NT),
                                cols,
                            );
                        }
                    }
                    r0 += mt;
                }
            });
        Ok(())
    }
}

/// Whether candle 0.11's own repacked x86 kernel takes an f32 × Q8_0 matmul with weights
/// `[n, k]` (its `repack_x86::select`, which is crate-private): `k` a multiple of 256, `n` of 16,
/// and 512-bit VNNI or AVX-VNNI, with `MISTRALRS_FORCE_AVX2=1` turning both off. There candle's
/// kernel is faster than this one (measured at k = 1536), so callers keep candle's.
pub fn candle_repacks_q8_0(n: usize, k: usize) -> bool {
    if k == 0 || !k.is_multiple_of(256) || !n.is_multiple_of(16) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        static VNNI: OnceLock<bool> = OnceLock::new();
        *VNNI.get_or_init(|| {
            let forced = |v: &str| std::env::var(v).as_deref() == Ok("1");
            if forced("MISTRALRS_FORCE_AVX2") {
                return false;
            }
            let avx512 =
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni");
            let avxvnni = (forced("MISTRALRS_FORCE_AVXVNNI")
                || is_x86_feature_detected!("avxvnni"))
                && is_x86_feature_detected!("avx2");
            (avx512 && !forced("MISTRALRS_FORCE_AVXVNNI")) || avxvnni
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Applies the packed weights to an f32 tensor `[.., k]` → `[.., n]` (CPU only).
impl CustomOp1 for PackedQ8_0 {
    fn name(&self) -> &'static str {
        "cord-q8_0-gemm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        super::matmul_fwd(
            "q8_0 gemm",
            storage,
            layout,
            (self.k, self.n),
            |x, m, dst| self.matmul(x, m, dst),
        )
    }
}

/// One block of the quantization loop: (values, int8 out), (scale out, correction out).
type BlockRefs<'a> = ((&'a [f32], &'a mut [i8]), (&'a mut f32, &'a mut i32));

/// Activation rows quantized to int8 blocks of 32 (ggml's `quantize_row_q8_0`, scale in f32).
pub struct QuantizedRows {
    k: usize,
    kb: usize,
    /// `[m, k]`.
    qs: Vec<i8>,
    /// `[m, kb]` scales.
    d: Vec<f32>,
    /// `[m, kb]`: `128 · Σ q` of the block.
    corr: Vec<i32>,
}

impl QuantizedRows {
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        let kb = k / QK;
        let mut a = QuantizedRows {
            k,
            kb,
            qs: vec![0; m * k],
            d: vec![0.0; m * kb],
            corr: vec![0; m * kb],
        };
        let quantize = |((xs, qs), (d, corr)): BlockRefs| {
            *d = quantize_block(xs, qs);
            *corr = 128 * qs.iter().map(|&q| q as i32).sum::<i32>();
        };
        if m * k >= 1 << 16 {
            x.par_chunks_exact(QK)
                .zip(a.qs.par_chunks_exact_mut(QK))
                .zip(a.d.par_iter_mut().zip(a.corr.par_iter_mut()))
                .for_each(quantize);
        } else {
            x.chunks_exact(QK)
                .zip(a.qs.chunks_exact_mut(QK))
                .zip(a.d.iter_mut().zip(a.corr.iter_mut()))
                .for_each(quantize);
        }
        a
    }

    /// Quantized values of row `r`, block `b`.
    pub fn block(&self, r: usize, b: usize) -> (&[i8], f32) {
        (
            &self.qs[r * self.k + b * QK..][..QK],
            self.d[r * self.kb + b],
        )
    }
}

/// Largest row chunk of any tier.
const MAX_MT: usize = 8;

/// The implementation of the inner tile, by CPU feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// `vpdpbusd` on 512-bit registers (AVX-512F + BW + VNNI).
    Avx512Vnni,
    /// `vpmaddubsw` + `vpmaddwd` with the sign trick (AVX2 + FMA; F16C, which every AVX2 CPU
    /// has, for the k-quant GEMV's scales).
    Avx2,
    /// Portable Rust; the reference.
    Scalar,
}

impl Tier {
    /// Every tier, fastest first.
    pub const ALL: [Tier; 3] = [Tier::Avx512Vnni, Tier::Avx2, Tier::Scalar];

    /// Whether this CPU can run the tier.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Tier::Avx512Vnni | Tier::Avx2 => false,
            Tier::Scalar => true,
        }
    }

    /// The best available tier, once per process. `MISTRALRS_FORCE_AVX2=1` (or
    /// `MISTRALRS_FORCE_AVXVNNI=1`, a tier this op does not have), which make candle use its
    /// 256-bit kernels, cap it at [`Tier::Avx2`] so that one machine can test both tiers.
    pub fn detect() -> Tier {
        static TIER: OnceLock<Tier> = OnceLock::new();
        *TIER.get_or_init(|| {
            let forced = |v: &str| std::env::var(v).as_deref() == Ok("1");
            let cap_avx2 = forced("MISTRALRS_FORCE_AVX2") || forced("MISTRALRS_FORCE_AVXVNNI");
            Tier::ALL
                .into_iter()
                .filter(|t| !(cap_avx2 && *t == Tier::Avx512Vnni))
                .find(|t| t.available())
                .unwrap_or(Tier::Scalar)
        })
    }

    /// Activation rows per inner tile.
    pub fn rows_per_tile(self) -> usize {
        match self {
            Tier::Avx512Vnni => 8,
            Tier::Avx2 => 2,
            Tier::Scalar => 4,
        }
    }

    /// `out[r] = row r0 + r of x · columns of tile` for `out.len()` ≤ `rows_per_tile` rows.
    fn run(self, tiles: &[Tile], a: &QuantizedRows, r0: usize, out: &mut [[f32; NT]]) {
        debug_assert!(out.len() <= self.rows_per_tile());
        debug_assert!(r0 + out.len() <= a.qs.len() / a.k);
        match self {
            Tier::Scalar => tile_scalar(tiles, a, r0, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `matmul_with` checked `available()`; bounds as asserted above.
            Tier::Avx512Vnni => unsafe {
                macro_rules! go {
                    ($($mt:literal)*) => {
                        match out.len() {
                            $($mt => x86::tile_avx512::<$mt>(tiles, a, r0, out),)*
                            _ => unreachable!(),
                        }
                    };
                }
                go!(1 2 3 4 5 6 7 8)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Tier::Avx2 => unsafe {
                match out.len() {
                    1 => x86::tile_avx2::<1>(tiles, a, r0, out),
                    2 => x86::tile_avx2::<2>(tiles, a, r0, out),
                    _ => unreachable!(),
                }
            },
            #[cfg(not(target_arch = "x86_64"))]
            Tier::Avx512Vnni | Tier::Avx2 => unreachable!("not available"),
        }
    }
}

/// The reference: exact i32 block dot products, then `acc = fma(isum, d_w · d_x, acc)`.
fn tile_scalar(tiles: &[Tile], a: &QuantizedRows, r0: usize, out: &mut [[f32; NT]]) {
    for (r, acc) in out.iter_mut().enumerate() {
        *acc = [0.0; NT];
        for (b, tile) in tiles.iter().enumerate() {
            let (xq, dx) = a.block(r0 + r, b);
            let corr = a.corr[(r0 + r) * a.kb + b];
            for (j, acc) in acc.iter_mut().enumerate() {
                let mut s = 0i32;
                for (i, &x) in xq.iter().enumerate() {
                    s += tile.qs[(i / 4) * NT * 4 + j * 4 + i % 4] as i32 * x as i32;
                }
                let scale = tile.d[j] * dx;
                *acc = ((s - corr) as f32).mul_add(scale, *acc);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{NT, QK, QuantizedRows, Tile};
    use std::arch::x86_64::*;

    /// Four activation bytes (`k`-values `4g..4g+4` of a block) as one i32.
    #[inline(always)]
    unsafe fn x4(a: &QuantizedRows, r: usize, b: usize, g: usize) -> i32 {
        // SAFETY: caller keeps r < m, b < kb, g < 8.
        unsafe { (a.qs.as_ptr().add(r * a.k + b * QK + g * 4) as *const i32).read_unaligned() }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_avx512<const MT: usize>(
        tiles: &[Tile],
        a: &QuantizedRows,
        r0: usize,
        out: &mut [[f32; NT]],
    ) {
        let mut acc = [_mm512_setzero_ps(); MT];
        for (b, tile) in tiles.iter().enumerate() {
            let mut isum = [_mm512_setzero_si512(); MT];
            for g in 0..QK / 4 {
                // SAFETY: tile.qs holds 8 groups of 64 bytes.
                let w = unsafe { _mm512_loadu_si512(tile.qs.as_ptr().add(g * 64) as *const _) };
                for (r, s) in isum.iter_mut().enumerate() {
                    let x = _mm512_set1_epi32(unsafe { x4(a, r0 + r, b, g) });
                    *s = _mm512_dpbusd_epi32(*s, w, x);
                }
            }
            // SAFETY: 16 f32.
            let dw = unsafe { _mm512_loadu_ps(tile.d.as_ptr()) };
            for (r, (acc, s)) in acc.iter_mut().zip(isum).enumerate() {
                let i = (r0 + r) * a.kb + b;
                let s = _mm512_sub_epi32(s, _mm512_set1_epi32(a.corr[i]));
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(a.d[i]));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *acc);
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            // SAFETY: 16 f32.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), acc) };
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2<const MT: usize>(
        tiles: &[Tile],
        a: &QuantizedRows,
        r0: usize,
        out: &mut [[f32; NT]],
    ) {
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); 2]; MT];
        for (b, tile) in tiles.iter().enumerate() {
            let mut isum = [[_mm256_setzero_si256(); 2]; MT];
            for g in 0..QK / 4 {
                // SAFETY: tile.qs holds 8 groups of 64 bytes; back to i8 (|w| <= 127).
                let p = unsafe { tile.qs.as_ptr().add(g * 64) };
                let w = unsafe {
                    [
                        _mm256_xor_si256(_mm256_loadu_si256(p as *const _), flip),
                        _mm256_xor_si256(_mm256_loadu_si256(p.add(32) as *const _), flip),
                    ]
                };
                for (r, s) in isum.iter_mut().enumerate() {
                    let x = _mm256_set1_epi32(unsafe { x4(a, r0 + r, b, g) });
                    // |x| (u8 <= 127) times w with x's sign: pair sums <= 2 * 127 * 127.
                    let ax = _mm256_sign_epi8(x, x);
                    for h in 0..2 {
                        let sw = _mm256_sign_epi8(w[h], x);
                        let p16 = _mm256_maddubs_epi16(ax, sw);
                        s[h] = _mm256_add_epi32(s[h], _mm256_madd_epi16(p16, ones));
                    }
                }
            }
            // SAFETY: 16 f32.
            let dw = unsafe {
                [
                    _mm256_loadu_ps(tile.d.as_ptr()),
                    _mm256_loadu_ps(tile.d.as_ptr().add(8)),
                ]
            };
            for (r, (acc, s)) in acc.iter_mut().zip(isum).enumerate() {
                let dx = _mm256_set1_ps(a.d[(r0 + r) * a.kb + b]);
                for h in 0..2 {
                    let scale = _mm256_mul_ps(dw[h], dx);
                    acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[h]), scale, acc[h]);
                }
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            // SAFETY: 16 f32.
            unsafe {
                _mm256_storeu_ps(o.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(o.as_mut_ptr().add(8), acc[1]);
            }
        }
    }
}
