//! The fused token log-prob op against the unfused candle path (log_softmax + gather) and against
//! a plain f64 computation.

use candle_core::{D, DType, Device, Tensor};
use cord_kernels::token_logprobs;

/// Deterministic pseudo-random logits (xorshift + Box-Muller), scale `sigma`, with some entries
/// replaced by extreme values.
fn logits(n: usize, v: usize, sigma: f32, seed: u64, extremes: bool) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut x: Vec<f32> = (0..n * v)
        .map(|_| {
            let (u1, u2) = (next(), next());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * sigma
        })
        .collect();
    if extremes {
        let specials = [1e4f32, 3e38, -1e30, f32::NEG_INFINITY, -3e38, 5e3];
        for r in 0..n {
            for (k, &val) in specials.iter().enumerate() {
                // Not every row gets every value: rows without 3e38 keep a moderate max.
                if (r + k) % 3 != 0 {
                    let j = ((next() * v as f64) as usize).min(v - 1);
                    x[r * v + j] = val;
                }
            }
        }
    }
    x
}

fn targets(n: usize, v: usize, x: &[f32], seed: u64) -> Vec<u32> {
    (0..n)
        .map(|r| {
            let row = &x[r * v..(r + 1) * v];
            match (r as u64 + seed) % 4 {
                // the row's argmax, an extreme entry if any, the last id, a pseudo-random id
                0 => (0..v).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() as u32,
                1 => (0..v).min_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() as u32,
                2 => (v - 1) as u32,
                _ => ((r * 7919 + 13) % v) as u32,
            }
        })
        .collect()
}

fn naive(logits: &Tensor, t: &Tensor) -> Vec<f32> {
    let l = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32).unwrap(), D::Minus1).unwrap();
    l.gather(&t.unsqueeze(1).unwrap(), 1)
        .unwrap()
        .squeeze(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn f64_reference(x: &[f32], ids: &[u32], v: usize) -> Vec<f64> {
    ids.iter()
        .enumerate()
        .map(|(r, &t)| {
            let row = &x[r * v..(r + 1) * v];
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let s: f64 = row.iter().map(|&y| (y as f64 - m).exp()).sum();
            (row[t as usize] as f64 - m) - s.ln()
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let w32 = w as f32; // f64 values beyond f32 range are infinities in f32 arithmetic too
        let ok = (g.is_nan() && w.is_nan())
            || (g.is_infinite() && g == w32)
            || (g.is_finite() && ((g as f64) - w).abs() <= atol + rtol * w.abs());
        assert!(ok, "{what}: row {i}: got {g}, want {w}");
    }
}

fn check(n: usize, v: usize, dtype: DType, sigma: f32, extremes: bool, seed: u64) {
    let x = logits(n, v, sigma, seed, extremes);
    let dev = Device::Cpu;
    let t32 = Tensor::from_vec(x.clone(), (n, v), &dev).unwrap();
    let lt = t32.to_dtype(dtype).unwrap();
    // The values the op actually sees (rounded to the dtype).
    let seen: Vec<f32> = lt
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let ids = targets(n, v, &seen, seed);
    let tt = Tensor::new(ids.as_slice(), &dev).unwrap();
    let fused = token_logprobs(&lt, &tt).unwrap();
    assert_eq!(fused.dims(), &[n]);
    assert_eq!(fused.dtype(), DType::F32);
    let fused: Vec<f32> = fused.to_vec1().unwrap();
    let what = format!("n={n} v={v} {dtype:?} extremes={extremes}");
    let unfused: Vec<f64> = naive(&lt, &tt).iter().map(|&y| y as f64).collect();
    assert_close(
        &fused,
        &unfused,
        2e-4,
        1e-6,
        &format!("vs log_softmax+gather, {what}"),
    );
    assert_close(
        &fused,
        &f64_reference(&seen, &ids, v),
        2e-4,
        1e-6,
        &format!("vs f64, {what}"),
    );
}

#[test]
fn f32_matches_unfused_and_f64() {
    check(1, 1, DType::F32, 3.0, false, 1);
    check(1, 7, DType::F32, 3.0, false, 2);
    check(1, 50_021, DType::F32, 4.0, true, 3);
    check(64, 1_001, DType::F32, 10.0, true, 4);
    check(1_000, 97, DType::F32, 2.0, true, 5);
    check(3, 151_936, DType::F32, 5.0, true, 6);
}

#[test]
fn bf16_matches_unfused_and_f64() {
    check(1, 7, DType::BF16, 3.0, false, 7);
    check(33, 32_003, DType::BF16, 5.0, true, 8);
    check(777, 129, DType::BF16, 2.0, true, 9);
}

#[test]
fn f16_matches_unfused_and_f64() {
    // No 3e38 / 1e30 here: they do not fit in f16 (they would turn into infinities).
    check(1, 13, DType::F16, 3.0, false, 10);
    check(40, 10_007, DType::F16, 4.0, false, 11);
}

#[test]
fn special_rows() {
    let dev = Device::Cpu;
    let inf = f32::INFINITY;
    let x = Tensor::new(
        &[
            [0.0f32, f32::NEG_INFINITY, 1.0],
            [f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY],
            [1.0, f32::NAN, 2.0],
            [3e38, 3e38, -3e38],
            [inf, 0.0, 1.0],
        ],
        &dev,
    )
    .unwrap();
    let t = Tensor::new(&[1u32, 0, 2, 1, 2], &dev).unwrap();
    let got: Vec<f32> = token_logprobs(&x, &t).unwrap().to_vec1().unwrap();
    assert_eq!(got[0], f32::NEG_INFINITY);
    assert!(
        got[1].is_nan() && got[2].is_nan() && got[4].is_nan(),
        "{got:?}"
    );
    assert!((got[3] - 0.5f32.ln()).abs() < 1e-6, "{got:?}");
    // Same as the unfused path for the all-(-inf) and huge rows.
    let want = naive(&x, &t);
    assert!(
        want[1].is_nan() && (want[3] - got[3]).abs() < 1e-6,
        "{want:?}"
    );
}

#[test]
fn non_contiguous_and_empty_inputs() {
    let dev = Device::Cpu;
    let x = logits(5, 11, 3.0, 12, false);
    let t = Tensor::from_vec(x, (11, 5), &dev).unwrap().t().unwrap(); // [5, 11], strided
    assert!(!t.is_contiguous());
    let ids = Tensor::new(&[0u32, 3, 10, 7, 1], &dev).unwrap();
    let got: Vec<f32> = token_logprobs(&t, &ids).unwrap().to_vec1().unwrap();
    let want: Vec<f64> = naive(&t, &ids).iter().map(|&y| y as f64).collect();
    assert_close(&got, &want, 1e-5, 1e-6, "strided");
    // A row slice of a bigger tensor (contiguous, non-zero offset).
    let big = Tensor::from_vec(logits(6, 11, 3.0, 13, false), (6, 11), &dev).unwrap();
    let part = big.narrow(0, 1, 5).unwrap();
    let got: Vec<f32> = token_logprobs(&part, &ids).unwrap().to_vec1().unwrap();
    let want: Vec<f64> = naive(&part, &ids).iter().map(|&y| y as f64).collect();
    assert_close(&got, &want, 1e-5, 1e-6, "offset");

    let empty = Tensor::zeros((0, 11), DType::F32, &dev).unwrap();
    let none = Tensor::zeros(0, DType::U32, &dev).unwrap();
    assert_eq!(token_logprobs(&empty, &none).unwrap().dims(), &[0]);
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
    let ok = Tensor::new(&[0u32, 3], &dev).unwrap();
    assert!(token_logprobs(&x, &ok).is_ok());
    assert!(
        token_logprobs(&x, &Tensor::new(&[0u32, 4], &dev).unwrap()).is_err(),
        "target out of range"
    );
    assert!(
        token_logprobs(&x, &Tensor::new(&[0u32], &dev).unwrap()).is_err(),
        "row count"
    );
    assert!(
        token_logprobs(&x, &Tensor::new(&[0i64, 1], &dev).unwrap()).is_err(),
        "target dtype"
    );
    assert!(
        token_logprobs(&x.flatten_all().unwrap(), &ok).is_err(),
        "rank"
    );
    let xi = Tensor::zeros((2, 4), DType::U32, &dev).unwrap();
    assert!(token_logprobs(&xi, &ok).is_err(), "logits dtype");
    let x0 = Tensor::zeros((2, 0), DType::F32, &dev).unwrap();
    assert!(token_logprobs(&x0, &ok).is_err(), "empty vocabulary");
}
