//! Does a token's result depend on how many tokens share its forward? A minimal reproduction.
//!
//! `cargo run -p cord-models --example row_invariance -- MODEL.gguf`
//!
//! 1. Every 2-D quantized weight of layer 0 (and the embeddings / LM head) through candle's
//!    `QMatMul` on 1..=16 random activation rows: row 0's output against the one-row call.
//! 2. The whole model: the logits of position 4 of one text as the text grows from 5 tokens,
//!    with each attention path (`paged`: per-row loop; `gather`: candle's f32 matmuls).
//!
//! Seen on an AMD EPYC (AVX-512 VNNI) with SmolLM2-135M and Qwen2.5-Coder-0.5B: (1) is exactly 0
//! for every weight and row count, under the machine's tier and `MISTRALRS_FORCE_AVX2=1`; (2) is
//! exactly 0 with `paged` and jumps to 0.47–0.67 (in logits) from 7–10 tokens on with `gather`,
//! against 4e-5 for the same text with `--dequantize`-style f32 weights: the f32 matmul's
//! blocking changes with the row count, and the next layer's 8-bit activation quantization turns
//! that into whole rounding steps.

use candle_core::quantized::{QMatMul, gguf_file};
use candle_core::{Device, Module, Tensor};
use cord_kv::KvCache;
use cord_models::{Attention, LoadOptions, LogitsMode, SeqInput};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: row_invariance MODEL.gguf"))?;
    let mut f = std::fs::File::open(&path)?;
    let ct = gguf_file::Content::read(&mut f)?;
    let mut names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
    names.sort();
    println!("1. QMatMul, row 0 vs a one-row call, max |Δ| for m = 1..=16");
    for name in names
        .iter()
        .filter(|n| n.starts_with("blk.0.") || !n.starts_with("blk."))
    {
        let qt = ct.tensor(&mut f, name, &Device::Cpu)?;
        let (n, k) = match qt.shape().dims() {
            &[n, k] => (n, k),
            _ => continue,
        };
        let dtype = qt.dtype();
        let mm = QMatMul::from_qtensor(qt)?;
        let x = Tensor::randn(0f32, 1.0, (16, k), &Device::Cpu)?;
        let row0 = |m: usize| -> anyhow::Result<Vec<f32>> {
            Ok(mm.forward(&x.narrow(0, 0, m)?)?.to_vec2::<f32>()?.remove(0))
        };
        let one = row0(1)?;
        let worst = (2..=16)
            .map(|m| row0(m).map(|r| max_abs_diff(&r, &one)))
            .collect::<anyhow::Result<Vec<f32>>>()?
            .into_iter()
            .fold(0f32, f32::max);
        println!("   {name:28} {dtype:?} [{n}, {k}]: {worst:.1e}");
    }
    println!("2. the model: logits of position 4 vs the 5-token text, max |Δ|");
    let mut m = cord_models::load(&path, &LoadOptions::default())?;
    let text = "The capital of France is Paris, a city in the north of the country, and it is";
    let ids: Vec<u32> = m
        .tokenizer
        .encode(text, false)
        .map_err(anyhow::Error::msg)?
        .get_ids()
        .to_vec();
    for attention in [Attention::Paged, Attention::Gather] {
        m.model.set_attention(attention);
        let mut base: Option<Vec<f32>> = None;
        let mut line = vec![];
        for len in 5..ids.len().min(18) {
            let mut kv = KvCache::new(m.model.kv_config(8, 16))?;
            let seq = kv.new_sequence();
            let logits = m
                .model
                .forward(&[SeqInput::new(seq, &ids[..len], LogitsMode::All)], &mut kv)?;
            let row = logits.to_vec2::<f32>()?.remove(4);
            let d = base.as_ref().map_or(0.0, |b| max_abs_diff(&row, b));
            base.get_or_insert(row);
            line.push(format!("{len}:{d:.1e}"));
        }
        println!("   {attention:?}: {}", line.join(" "));
    }
    Ok(())
}
