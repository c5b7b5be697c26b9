//! The Q8_0 int8 GEMM: every SIMD tier against the scalar reference (bit for bit), and the
//! reference against an f64 matmul of the dequantized weights within a bound derived from the
//! activation quantization.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Module, Tensor};
use cord_kernels::cpu::{PackedQ8_0, Tier};

const KS: [usize; 5] = [32, 576, 896, 1536, 4864];
const MS: [usize; 4] = [1, 3, 16, 130];
/// Not multiples of the 16-column tile (except 48), one smaller than a tile.
const NS: [usize; 3] = [7, 48, 77];

/// f32 unit roundoff.
const U: f64 = 1.0 / (1u64 << 24) as f64;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

/// Activations with varied block magnitudes, one all-zero block per row when k allows, and
/// an occasional outlier (what makes real activation blocks coarse).
fn activations(rng: &mut Rng, m: usize, k: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(m * k);
    for r in 0..m {
        for b in 0..k / 32 {
            let scale = [0.01f32, 1.0, 30.0][(r + b) % 3];
            for i in 0..32 {
                let v = if k > 32 && b == (r % (k / 32)) {
                    0.0
                } else if i == 7 && b % 5 == 0 {
                    20.0 * scale
                } else {
                    scale * rng.sym()
                };
                x.push(v);
            }
        }
    }
    x
}

/// Random weights `[n, k]` quantized by candle to Q8_0: (repacked, dequantized values).
fn weights(rng: &mut Rng, n: usize, k: usize) -> (PackedQ8_0, Vec<f32>, QTensor) {
    let w: Vec<f32> = (0..n * k).map(|_| 0.05 * rng.sym()).collect();
    let t = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
    let packed = PackedQ8_0::from_q8_0_bytes(&q.data().unwrap(), n, k).unwrap();
    let deq = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (packed, deq, q)
}

fn run(p: &PackedQ8_0, tier: Tier, x: &[f32], m: usize) -> Vec<f32> {
    let mut y = vec![f32::NAN; m * p.n()];
    p.matmul_with(tier, x, m, &mut y).unwrap();
    y
}

#[test]
fn every_tier_matches_the_scalar_reference_bit_for_bit() {
    let mut rng = Rng(1);
    for tier in [Tier::Avx512Vnni, Tier::Avx2] {
        let mut checked = 0;
        if !tier.available() {
            println!("SKIPPED {tier:?}: this CPU lacks it");
            continue;
        }
        for k in KS {
            for n in NS {
                let (p, _, _) = weights(&mut rng, n, k);
                for m in MS {
                    let x = activations(&mut rng, m, k);
                    let want = run(&p, Tier::Scalar, &x, m);
                    let got = run(&p, tier, &x, m);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "{tier:?} m={m} k={k} n={n} at ({}, {}): {g} vs {w}",
                            i / n,
                            i % n
                        );
                    }
                    checked += 1;
                }
            }
        }
        println!("{tier:?}: {checked} shapes equal to the reference");
    }
}

/// Error of the reference against `x Wᵀ` in f64 with the dequantized weights.
///
/// Each activation `x_i` of a block with scale `d = amax/127` becomes `d·q_i` with
/// `|d·q_i − x_i| ≤ d/2` (rounding to the nearest integer) plus the f32 roundings of `d`,
/// `1/d` and `x·(1/d)` (each ≤ u relative, |q| ≤ 127: ≤ 127·3u·d more). The integer dot products
/// are exact; the f32 part rounds `d_w·d_x` and each of the `kb` fused multiply-adds once, so it
/// adds at most `(kb + 1)·u` (first order) of `Σ_b |d_w d_x isum_b| ≤ Σ_i |w_i| |x̂_i|`.
#[test]
fn reference_is_within_the_activation_quantization_bound() {
    let mut rng = Rng(2);
    for k in KS {
        let kb = k / 32;
        for n in NS {
            let (p, w, _) = weights(&mut rng, n, k);
            for m in MS {
                let x = activations(&mut rng, m, k);
                let y = run(&p, Tier::Scalar, &x, m);
                for r in 0..m {
                    let xr = &x[r * k..(r + 1) * k];
                    // Per-element activation error bound.
                    let e: Vec<f64> = xr
                        .chunks(32)
                        .flat_map(|b| {
                            let amax = b.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                            let d = amax / 127.0;
                            std::iter::repeat_n(d * (0.5 + 127.0 * 3.0 * U), 32)
                        })
                        .collect();
                    for c in 0..n {
                        let wc = &w[c * k..(c + 1) * k];
                        let (mut exact, mut qerr, mut mag) = (0f64, 0f64, 0f64);
                        for i in 0..k {
                            let (wi, xi) = (wc[i] as f64, xr[i] as f64);
                            exact += wi * xi;
                            qerr += wi.abs() * e[i];
                            mag += wi.abs() * (xi.abs() + e[i]);
                        }
                        let bound = qerr + (kb as f64 + 2.0) * U * mag;
                        let got = y[r * n + c] as f64;
                        assert!(
                            (got - exact).abs() <= bound,
                            "m={m} k={k} n={n} ({r}, {c}): {got} vs {exact}, bound {bound}"
                        );
                    }
                }
            }
        }
    }
}

/// candle's generic path quantizes activations the same way but keeps the block scale in f16:
/// the two differ by that rounding (≤ 2^-11 relative, normal range) plus both sides' f32
/// accumulation (≤ (kb + 2)·u each) of `Σ_i |w_i| |x̂_i|`.
#[test]
fn agrees_with_candles_qmatmul() {
    let mut rng = Rng(3);
    for k in [576usize, 896] {
        let kb = k / 32;
        let (p, w, q) = weights(&mut rng, 77, k);
        let qm = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
        for m in [1usize, 5] {
            // Block magnitudes of O(1): the f16 scale stays in its normal range.
            let x: Vec<f32> = (0..m * k).map(|_| rng.sym()).collect();
            let ours = run(&p, Tier::detect(), &x, m);
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let theirs = qm.forward(&xt).unwrap().flatten_all().unwrap();
            let theirs = theirs.to_vec1::<f32>().unwrap();
            for r in 0..m {
                for c in 0..77 {
                    // Σ |w_i| (|x_i| + d/2 + ...) ≥ Σ |w_i| |x̂_i| (see the bound above).
                    let mag: f64 = (0..k)
                        .map(|i| {
                            let blk = &x[r * k + i / 32 * 32..][..32];
                            let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                            let e = amax / 127.0 * (0.5 + 127.0 * 3.0 * U);
                            (w[c * k + i] as f64).abs() * ((x[r * k + i] as f64).abs() + e)
                        })
                        .sum();
                    let bound = (1.0 / 2048.0 + 2.0 * (kb as f64 + 2.0) * U) * mag;
                    let (a, b) = (ours[r * 77 + c] as f64, theirs[r * 77 + c] as f64);
                    assert!(
                        (a - b).abs() <= bound,
                        "k={k} ({r}, {c}): {a} vs {b} > {bound}"
                    );
                }
            }
        }
    }
}

#[test]
fn tensor_op_keeps_leading_dims_and_nan_propagates() {
    let mut rng = Rng(4);
    let (p, _, _) = weights(&mut rng, 20, 64);
    let x = activations(&mut rng, 6, 64);
    let want = run(&p, Tier::Scalar, &x, 6);
    let xt = Tensor::from_vec(x.clone(), (2, 3, 64), &Device::Cpu).unwrap();
    let y = xt.apply_op1_no_bwd(&p).unwrap();
    assert_eq!(y.dims(), &[2, 3, 20]);
    let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let tier = Tier::detect();
    let want_tier = run(&p, tier, &x, 6);
    assert_eq!(y, want_tier, "{tier:?}");
    // The op uses the detected tier, equal to the reference.
    assert_eq!(want, want_tier);

    let mut xn = x.clone();
    xn[64 + 40] = f32::NAN;
    let y = run(&p, tier, &xn, 6);
    for (i, v) in y.iter().enumerate() {
        assert_eq!(
            v.is_nan(),
            i / 20 == 1,
            "row {} col {}: {v}",
            i / 20,
            i % 20
        );
    }
}

#[test]
fn rejects_bad_shapes() {
    assert!(PackedQ8_0::from_q8_0_bytes(&[0; 34], 1, 48).is_err());
    assert!(PackedQ8_0::from_q8_0_bytes(&[0; 33], 1, 32).is_err());
    let p = PackedQ8_0::from_q8_0_bytes(&[0; 68], 2, 32).unwrap();
    let mut y = vec![0.0; 2];
    assert!(p.matmul(&[0.0; 31], 1, &mut y).is_err());
}
