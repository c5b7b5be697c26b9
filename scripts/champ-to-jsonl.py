#!/usr/bin/env python3
"""Convert the CHAMP dataset (v0.json of the champ-dataset package) to cord's problems JSONL.

Usage: python3 scripts/champ-to-jsonl.py [V0_JSON] [OUT_JSONL]
Defaults: $CORD_MODELS/data/champ/v0.json (CORD_MODELS defaults to ~/.cache/cord/models) and
data/champ.jsonl. Python 3 standard library only; the output is deterministic.

Each line: {"id", "question", "answer", "answer_text", "category"}.
- `question` is CHAMP's `_text` (the problem with its `@@...@@` math markers removed).
- `answer_text` is CHAMP's `_answer` (the reference answer as written, markers removed).
- `answer` is the reference answer in a form cord's verifier compares (see `convert`): the math
  of the answer without the prose around it, or the prose itself (compared as text) when the
  answer is a statement.
"""

import json
import os
import re
import sys

MATH = re.compile(r"@@(.*?)@@")


def plain(s):
    """The text with `@@` markers removed."""
    return MATH.sub(lambda m: m.group(1), s).strip()


def solution(m):
    """One solution given as assignments ("x=0, y=2") as a tuple of assignments."""
    m = m.strip()
    if m.startswith("(") and m.endswith(")"):
        return m
    return f"({m})"


def convert(raw):
    """CHAMP's raw answer (with `@@` math) -> the answer the verifier reads."""
    raw = raw.strip()
    maths = MATH.findall(raw)
    text = plain(raw)

    # "X, or equivalently Y" / "X, or an equivalent form such as Y": the closed form Y.
    m = re.match(r"^(.*?), or (?:equivalently|an equivalent form such as) (.*)$", text)
    if m:
        return m.group(2).strip()
    # "X, or approximately Y": the exact X.
    m = re.match(r"^(.*?), or approximately .*$", text)
    if m:
        return m.group(1).strip()
    # "100 (i.e., all values)", "0 (none of the values)", "k-2 (i.e., all of them)".
    m = re.match(r"^(.+?) \((?:i\.e\.,|none|no) .*\)$", text)
    if m:
        text = m.group(1).strip()
    # "At most 0 integer-valued zeros", "At least 1 number": the count.
    m = re.match(r"^At (?:most|least) (-?\d+)\b.*$", text)
    if m:
        return m.group(1)
    # "0 is the only possible value", "3 is the only possible value".
    m = re.match(r"^(-?\d+) is the only possible value$", text)
    if m:
        return m.group(1)
    # "The limit exists and is equal to X", "The only possible value for the limit is X".
    m = re.match(r"^(?:The limit exists and is equal to|The only possible value for the limit is) (.+)$", text)
    if m:
        return m.group(1).strip()
    # "98 values", "0 pairs", "2 inequalities", "n times": the number.
    m = re.match(r"^(\S+) (?:values|pairs|roots|inequalities|times)$", text)
    if m:
        return m.group(1)
    # "Yes, and the sequence is ...": the yes/no part.
    m = re.match(r"^(Yes|No)\b,", text)
    if m:
        return m.group(1)
    # Several solutions, each a set of assignments: a set of tuples.
    if maths and re.fullmatch(r"(?:@@[^@]*@@(?:, | and | or )?)+", raw):
        parts = [p.strip() for p in maths]
        tuples = []
        for p in parts:
            # "(x=8, y=2), (x=2, y=8)" holds several solutions in one math span.
            tuples += re.findall(r"\([^()]*\)", p) if p.startswith("(") else [solution(p)]
        several = len(tuples) > 1 and all("=" in t and "," in t for t in tuples)
        if several and "±" not in raw:
            # One tuple of assignments per solution ("x=6, y=5" alone is one tuple already).
            return "\\{" + ", ".join(tuples) + "\\}"
        if len(parts) > 1 and all(re.fullmatch(r"[a-z]=[^,=]+", p) for p in parts):
            return ", ".join(p.split("=", 1)[1] for p in parts)
    # "376 and 625", "1, 4 and 9": a list of numbers.
    if re.fullmatch(r"-?\d+(?:(?:, | and )-?\d+)+", text):
        return ", ".join(re.findall(r"-?\d+", text))
    return text


def main():
    models = os.environ.get("CORD_MODELS", os.path.expanduser("~/.cache/cord/models"))
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(models, "data/champ/v0.json")
    out = sys.argv[2] if len(sys.argv) > 2 else "data/champ.jsonl"
    with open(src, encoding="utf-8") as f:
        problems = json.load(f)["problems"]
    with open(out, "w", encoding="utf-8") as f:
        for key, p in problems.items():
            rec = {
                "id": f"champ-{key}",
                "question": p["_text"].strip(),
                "answer": convert(p["_raw_answer"]),
                "answer_text": p["_answer"].strip(),
                "category": p["category"],
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"{out}: {len(problems)} problems")


if __name__ == "__main__":
    main()
