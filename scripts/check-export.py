#!/usr/bin/env python3
"""Check a `cord export` directory the way a trainer would read it.

Usage: python3 scripts/check-export.py DIR [--rows N]

Reads DIR with pyarrow (required) and, when the `datasets` package is importable, with
`datasets.load_dataset("parquet", data_dir=DIR)`; asserts the columns, their types, the row
count (== N when given) and the dataset card's front matter. Exits non-zero on any mismatch.
"""

import argparse
import os
import sys

COLUMNS = [
    "id", "question", "answer", "messages", "correct", "score", "predicted",
    "predicted_normalized", "teachers", "answer_teacher", "method", "pool", "attempts",
    "tokens_generated",
]


def fail(msg):
    print(f"check-export: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--rows", type=int)
    a = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(a.dir, "data", "train-00000-of-00001.parquet")
    table = pq.read_table(path)
    if table.column_names != COLUMNS:
        fail(f"columns {table.column_names}, expected {COLUMNS}")
    n = table.num_rows
    if a.rows is not None and n != a.rows:
        fail(f"{n} rows, expected {a.rows}")
    if n == 0:
        fail("no rows")
    t = table.schema
    if t.field("correct").type != pa.bool_() or t.field("score").type != pa.float64():
        fail(f"types of correct / score: {t.field('correct').type} / {t.field('score').type}")
    msg = t.field("messages").type
    if not pa.types.is_list(msg) or [f.name for f in msg.value_type] != ["role", "content"]:
        fail(f"messages is {msg}, expected list<struct<role, content>>")
    rows = table.to_pylist()
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        if roles != ["user", "assistant"] or r["messages"][0]["content"] != r["question"]:
            fail(f"{r['id']}: messages {roles}")
        if not r["pool"] or not isinstance(r["teachers"], list):
            fail(f"{r['id']}: pool / teachers")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        fail("duplicate ids")

    card = open(os.path.join(a.dir, "README.md"), encoding="utf-8").read()
    if not card.startswith("---\n") or "\n---\n" not in card[4:]:
        fail("README.md has no YAML front matter")
    front = card[4:card.index("\n---\n", 4)]
    for key in ("license:", "task_categories:", "configs:", "data_files:"):
        if key not in front:
            fail(f"front matter lacks {key}")
    print(f"pyarrow {pa.__version__}: {n} rows, {len(COLUMNS)} columns ok")

    try:
        import datasets
    except ImportError:
        print("datasets not importable: load_dataset check skipped")
        return
    ds = datasets.load_dataset("parquet", data_dir=a.dir, split="train")
    if ds.num_rows != n or ds.column_names != COLUMNS:
        fail(f"load_dataset: {ds.num_rows} rows, columns {ds.column_names}")
    if ds[0]["messages"][1]["role"] != "assistant":
        fail("load_dataset: messages")
    print(f"datasets {datasets.__version__}: load_dataset('parquet', data_dir=...) ok, {ds.num_rows} rows")


if __name__ == "__main__":
    main()
