"""Shared helpers for the peer benchmarks: load the same GGUF files cord uses into HF
transformers (dequantized to f32, as transformers does) with the model's own tokenizer.json and
the chat template stored in the GGUF metadata, and time things the same way on every side."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

MODELS = Path(os.environ.get("CORD_MODELS", Path.home() / ".cache/cord/models"))


def expand(spec: str) -> str:
    return (
        spec.replace("${CORD_MODELS}", str(MODELS))
        .replace("$CORD_MODELS", str(MODELS))
        .replace("~/", str(Path.home()) + "/")
    )


def gguf_meta(path: str) -> dict:
    """The string / scalar metadata of a GGUF file (chat template, BOS/EOS ids)."""
    from gguf import GGUFReader

    r = GGUFReader(path)
    out = {}
    for name, field in r.fields.items():
        if not name.startswith("tokenizer.") or name in (
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
        ):
            continue
        try:
            v = field.contents()
        except Exception:  # noqa: BLE001
            continue
        out[name] = v
    return out


class HfModel:
    """A GGUF file loaded by transformers (f32) plus its tokenizer and chat template."""

    def __init__(self, gguf_path: str, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

        if threads:
            torch.set_num_threads(threads)
        p = Path(gguf_path)
        self.path = str(p)
        meta = gguf_meta(self.path)
        self.tok = PreTrainedTokenizerFast(tokenizer_file=str(p.parent / "tokenizer.json"))
        self.tok.chat_template = meta.get("tokenizer.chat_template")
        vocab = self.tok.convert_ids_to_tokens
        self.eos_ids = {int(meta["tokenizer.ggml.eos_token_id"])} if "tokenizer.ggml.eos_token_id" in meta else set()
        for extra in ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<eos>"):
            i = self.tok.convert_tokens_to_ids(extra)
            if isinstance(i, int) and i >= 0 and i != self.tok.unk_token_id:
                self.eos_ids.add(i)
        self.bos = None
        if meta.get("tokenizer.ggml.add_bos_token") and "tokenizer.ggml.bos_token_id" in meta:
            self.bos = vocab(int(meta["tokenizer.ggml.bos_token_id"]))
        t0 = time.perf_counter()
        self.model = AutoModelForCausalLM.from_pretrained(
            str(p.parent), gguf_file=p.name, dtype=torch.float32
        ).eval()
        self.load_seconds = time.perf_counter() - t0

    def render(self, system: str | None, question: str, raw: str) -> str:
        msgs = []
        if system:
            msgs.append({"role": "system", "content": system})
        msgs.append({"role": "user", "content": question})
        head = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        text = head + raw
        if self.bos and not text.startswith(self.bos):
            text = self.bos + text
        return text

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]


def spread(xs: list[float]) -> dict:
    return {
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "runs": len(xs),
    }


def dump(obj, path: str | None):
    s = json.dumps(obj, indent=2)
    if path and path != "-":
        Path(path).write_text(s + "\n")
    print(s)
