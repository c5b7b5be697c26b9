"""Load generator for `cord serve` (standard library only): C concurrent clients, each sending R
streaming completion requests one after another, and the figures of BENCHMARKS.md ("serve"):
throughput (completion tokens per second of wall time, all clients), time to first token, and
tokens per second per client (completion tokens / time from first to last token of a request).

Usage: python3 load.py BASE_URL MODEL --clients 1,8,32 [--requests R] [--max-tokens N] [--tag T]
"""

import argparse
import json
import statistics
import threading
import time
import urllib.request


def one_request(base, model, prompt, max_tokens, seed):
    body = json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "seed": seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    req = urllib.request.Request(
        base + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    t0 = time.perf_counter()
    first = None
    tokens = 0
    with urllib.request.urlopen(req, timeout=3600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            v = json.loads(data)
            if "error" in v:
                raise RuntimeError(v["error"])
            if v.get("choices") and v["choices"][0].get("text") and first is None:
                first = time.perf_counter()
            if v.get("usage"):
                tokens = v["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"ttft": (first or end) - t0, "tokens": tokens, "decode_s": end - (first or end), "total_s": end - t0}


def run(base, model, clients, requests, max_tokens, tag):
    results = []
    lock = threading.Lock()

    def client(c):
        for r in range(requests):
            prompt = f"{tag}Client {c}, story {r}. Write a long story about a robot who learns to cook:\n"
            out = one_request(base, model, prompt, max_tokens, seed=1000 * c + r)
            with lock:
                results.append(out)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    toks = sum(r["tokens"] for r in results)
    per_client = [
        (r["tokens"] - 1) / r["decode_s"] for r in results if r["tokens"] > 1 and r["decode_s"] > 0
    ]
    ttft = [r["ttft"] for r in results]
    return {
        "clients": clients,
        "requests": len(results),
        "completion_tokens": toks,
        "wall_s": round(wall, 1),
        "throughput_tok_s": round(toks / wall, 2),
        "ttft_s_median": round(statistics.median(ttft), 2),
        "ttft_s_max": round(max(ttft), 2),
        "tok_s_per_client_median": round(statistics.median(per_client), 2) if per_client else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("model")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument(
        "--tag", default="", help="prefix of every prompt (a new tag keeps the prefix cache cold)"
    )
    a = ap.parse_args()
    for c in [int(x) for x in a.clients.split(",")]:
        r = run(a.base.rstrip("/"), a.model, c, a.requests, a.max_tokens, a.tag + f"[{c}] ")
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
