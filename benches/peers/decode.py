"""Single-sequence (and small-batch) decode throughput of the peers on one GGUF file:
HF transformers (PyTorch CPU, the GGUF dequantized to f32) and llama.cpp (llama-cpp-python, the
GGUF as is). Same random prompt length and number of generated tokens as `cord bench decode`.

  python benches/peers/decode.py --model ~/.cache/cord/models/qwen2.5-coder-0.5b/model.gguf \
      --peer hf --prompt-len 128 --gen-len 64 --repeat 3 --json out.json
"""

from __future__ import annotations

import argparse
import os
import random
import time

from common import HfModel, dump, spread


def prompt_ids(vocab: int, n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    # Skip the first ids (special/control tokens in most vocabularies).
    return [rng.randrange(1000, vocab - 1000) for _ in range(n)]


def bench_hf(a) -> dict:
    import torch

    m = HfModel(a.model, threads=a.threads)
    vocab = m.model.config.vocab_size
    out = {"peer": "hf-transformers", "torch": torch.__version__, "dtype": "f32", "cases": []}
    for batch in a.batch:
        pre, dec = [], []
        for r in range(a.repeat):
            ids = torch.tensor([prompt_ids(vocab, a.prompt_len, a.seed + r * 1000 + b) for b in range(batch)])
            with torch.inference_mode():
                t0 = time.perf_counter()
                o = m.model(input_ids=ids, use_cache=True)
                t1 = time.perf_counter()
                past = o.past_key_values
                nxt = o.logits[:, -1:].argmax(-1)
                for _ in range(a.gen_len):
                    o = m.model(input_ids=nxt, past_key_values=past, use_cache=True)
                    past = o.past_key_values
                    nxt = o.logits[:, -1:].argmax(-1)
                t2 = time.perf_counter()
            pre.append(batch * a.prompt_len / (t1 - t0))
            dec.append(batch * a.gen_len / (t2 - t1))
        out["cases"].append(
            {"batch": batch, "prefill_tok_s": spread(pre), "decode_tok_s": spread(dec)}
        )
    return out


def bench_llama(a) -> dict:
    import llama_cpp

    threads = a.threads or os.cpu_count()
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_ctx=a.prompt_len + a.gen_len + 16,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        verbose=False,
    )
    vocab = llm.n_vocab()
    out = {"peer": "llama.cpp", "llama_cpp_python": llama_cpp.__version__, "cases": []}
    pre, dec = [], []
    for r in range(a.repeat):
        llm.reset()
        ids = prompt_ids(vocab, a.prompt_len, a.seed + r * 1000)
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        for _ in range(a.gen_len):
            tok = llm.sample(temp=0.0)
            llm.eval([tok])
        t2 = time.perf_counter()
        pre.append(a.prompt_len / (t1 - t0))
        dec.append(a.gen_len / (t2 - t1))
    out["cases"].append({"batch": 1, "prefill_tok_s": spread(pre), "decode_tok_s": spread(dec)})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--peer", choices=["hf", "llama"], required=True)
    ap.add_argument("--batch", default="1", help="comma separated (hf only; llama.cpp: 1)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    a.batch = [int(x) for x in a.batch.split(",")]
    res = bench_hf(a) if a.peer == "hf" else bench_llama(a)
    res.update({"model": a.model, "prompt_len": a.prompt_len, "gen_len": a.gen_len})
    dump(res, a.json)


if __name__ == "__main__":
    main()
