"""The CoRD loop as research code writes it, on HF transformers: the peer of `cord synth`.

Same pool file (teachers, system prompts, sampling, meta-prover), same problems, beam width,
budgets, step unit (`### Step N.` headers, stop at the next header or `</think>`), scoring
(exp of the mean log-prob of the ground-truth answer after `" </think> The final answer is "`)
and memoryless top-B selection. What it does not have is what cord adds: every candidate is a
separate `generate` call from the full text (no KV cache shared across beams or steps, no
batching across beams, teachers or problems), and every score is a full forward pass over the
whole text. Models are the same GGUF files, dequantized to f32 by transformers.

  python benches/peers/hf_cord.py --pool models/demo.toml --input data/gsm8k.jsonl --limit 2 \
      --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import tomllib
import zlib

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from common import HfModel, dump, expand

SUFFIX = " </think> The final answer is "
THINK_CLOSE = "</think>"


class StopOnText(StoppingCriteria):
    """Stops when the decoded continuation contains one of the stop strings."""

    def __init__(self, tok, start: int, stops: list[str]):
        self.tok, self.start, self.stops = tok, start, stops

    def __call__(self, input_ids, scores, **kw):
        text = self.tok.decode(input_ids[0, self.start :], skip_special_tokens=False)
        return any(s in text for s in self.stops)


def generate(m: HfModel, prompt: str, max_new: int, temp: float, top_p: float, stops, seed: int):
    """One sampled continuation; returns (text before the first stop, reason)."""
    ids = torch.tensor([m.encode(prompt)])
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = m.model.generate(
            ids,
            max_new_tokens=max_new,
            do_sample=temp > 0,
            temperature=temp if temp > 0 else None,
            top_p=top_p,
            top_k=0,
            eos_token_id=sorted(m.eos_ids),
            pad_token_id=sorted(m.eos_ids)[0],
            stopping_criteria=StoppingCriteriaList([StopOnText(m.tok, ids.shape[1], stops)]),
        )
    new = out[0, ids.shape[1] :].tolist()
    eos = bool(new) and new[-1] in m.eos_ids
    text = m.tok.decode([t for t in new if t not in m.eos_ids], skip_special_tokens=False)
    for s in stops:
        i = text.find(s)
        if i >= 0:
            return text[:i], ("think" if s == THINK_CLOSE else "step"), len(new)
    return text, ("eos" if eos else "length"), len(new)


def score(mp: HfModel, system, question: str, reasoning: str, gt: str) -> float:
    """exp(mean log p(answer tokens | context)), one full forward pass (no cache)."""
    context = mp.render(system, question, reasoning.rstrip() + SUFFIX)
    ctx = mp.encode(context)
    full = mp.encode(context + gt)
    # Answer tokens: those past the longest common prefix with the context's tokens.
    k = 0
    while k < min(len(ctx), len(full)) and ctx[k] == full[k]:
        k += 1
    ids = torch.tensor([full])
    with torch.inference_mode():
        logits = mp.model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits[k - 1 : len(full) - 1], -1)
    tgt = torch.tensor(full[k:])
    return math.exp(lp.gather(1, tgt[:, None]).mean().item())


def final_number(text: str) -> str | None:
    t = text.replace(",", "")
    i = t.lower().rfind("answer is")
    if i >= 0:
        t = t[i:]
    nums = re.findall(r"-?\d+(?:\.\d+)?", t)
    return nums[0] if i >= 0 and nums else (nums[-1] if nums else None)


def cord(problem, teachers, mp, mp_system, s) -> dict:
    q, gt = problem["question"], problem["answer"]
    live = [{"reasoning": "", "steps": [], "score": float("nan"), "teacher": 0}]
    finished = []
    calls = {"generate": 0, "score": 0, "generated_tokens": 0}
    t_score = 0.0
    for t in range(1, s["max_steps"] + 1):
        cands = []
        for bi, b in enumerate(live):
            header = f"### Step {t}."
            for k, (name, m, tc) in enumerate(teachers):
                prefix = b["reasoning"] + header
                prompt = m.render(tc.get("system_prompt"), q, prefix)
                used = len(m.encode(prefix))
                room = s["think_budget"] - used
                if room <= 0:
                    continue
                cap = min(s["max_step_tokens"], room)
                seed = zlib.crc32(f"{problem['id']}/{t}/{bi}/{k}/{s['seed']}".encode())
                text, reason, n = generate(
                    m, prompt, cap, tc["temperature"], tc.get("top_p", 1.0),
                    ["### Step", THINK_CLOSE], seed,
                )
                calls["generate"] += 1
                calls["generated_tokens"] += n
                if not text.strip():
                    continue
                done = reason in ("think", "eos") or (reason == "length" and cap < s["max_step_tokens"])
                body = text.rstrip() + ("\n" + THINK_CLOSE if done else "\n\n")
                cands.append({
                    "reasoning": prefix + body,
                    "steps": b["steps"] + [name],
                    "teacher": k,
                    "done": done,
                })
        if not cands:
            break
        t0 = time.perf_counter()
        for c in cands:
            r = c["reasoning"]
            if r.endswith(THINK_CLOSE):
                r = r[: -len(THINK_CLOSE)]
            c["score"] = score(mp, mp_system, q, r, s["target"](gt))
            calls["score"] += 1
        t_score += time.perf_counter() - t0
        cands.sort(key=lambda c: -c["score"])
        top = cands[: s["beam_width"]]
        finished += [c for c in top if c["done"]]
        live = [c for c in top if not c["done"]]
        if not live:
            break
    pool = finished or [dict(c, reasoning=c["reasoning"] + "\n" + THINK_CLOSE) for c in live]
    best = max(pool, key=lambda c: c["score"])
    name, m, tc = teachers[best["teacher"]]
    reasoning = best["reasoning"] if best["reasoning"].endswith(THINK_CLOSE) else best["reasoning"] + "\n" + THINK_CLOSE
    answer, _, n = generate(
        m, m.render(tc.get("system_prompt"), q, reasoning + "\n\n"), s["answer_budget"],
        tc["temperature"], tc.get("top_p", 1.0), [], 1,
    )
    calls["generate"] += 1
    calls["generated_tokens"] += n
    pred = final_number(answer)
    return {
        "id": problem["id"],
        "steps": best["steps"],
        "score": best["score"],
        "predicted": pred,
        "correct": pred is not None and float(pred) == float(gt),
        "calls": calls,
        "score_seconds": t_score,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--limit", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--seed", type=int, default=None, help="overrides the pool's search.seed")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    pool = tomllib.load(open(a.pool, "rb"))
    s = dict(pool["search"])
    s.setdefault("beam_width", 4)
    s.setdefault("max_steps", 512)
    s.setdefault("seed", 0)
    if a.seed is not None:
        s["seed"] = a.seed
    s["target"] = lambda gt: gt if gt.endswith(".") else gt + "."
    t0 = time.perf_counter()
    models = {}
    teachers = []
    for tc in pool["teacher"]:
        path = expand(tc["model"])
        if path not in models:
            models[path] = HfModel(path)
        teachers.append((tc["name"], models[path], tc))
    sc = pool["scorer"]
    by_name = {n: (m, tc) for n, m, tc in teachers}
    if sc["model"] in by_name:
        mp, tc = by_name[sc["model"]]
        mp_system = tc.get("system_prompt")
    else:
        path = expand(sc["model"])
        mp = models.setdefault(path, HfModel(path))
        mp_system = sc.get("system_prompt")
    load = time.perf_counter() - t0
    probs = [json.loads(l) for l in open(a.input) if l.strip()][: a.limit]
    out = []
    for p in probs:
        t1 = time.perf_counter()
        r = cord(p, teachers, mp, mp_system, s)
        r["seconds"] = time.perf_counter() - t1
        out.append(r)
        print(json.dumps(r), flush=True)
    total = sum(r["seconds"] for r in out)
    dump({
        "peer": "hf-transformers python CoRD loop",
        "pool": a.pool,
        "problems": len(out),
        "load_seconds": load,
        "seconds": total,
        "seconds_per_problem": total / max(1, len(out)),
        "score_share": sum(r["score_seconds"] for r in out) / max(total, 1e-9),
        "correct": sum(r["correct"] for r in out),
        "records": out,
    }, a.json)


if __name__ == "__main__":
    main()
