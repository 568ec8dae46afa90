"""The pyarrow/pandas peer of `bench_data`: the same validation and conversion
of the same Parquet file, done the way a Python data script would.

    python data_peer.py validate PATH
    python data_peer.py convert PATH OUT

Prints one JSON object: phase, rows, seconds, peak_rss_kb.
"""
import json
import resource
import sys
import time

import pandas as pd
import pyarrow.parquet as pq

COLUMNS = ["prompt", "completion", "system"]


def batches(path):
    for batch in pq.ParquetFile(path).iter_batches(batch_size=8192, columns=COLUMNS):
        yield batch.to_pandas()


def validate(path):
    rows = nulls = empty = null_systems = duplicates = 0
    seen = set()
    length_counts = {c: pd.Series(dtype="int64") for c in COLUMNS}
    for df in batches(path):
        rows += len(df)
        for col in ("prompt", "completion"):
            s = df[col]
            nulls += int(s.isna().sum())
            empty += int((s.fillna("").str.strip() == "").sum())
        null_systems += int(df["system"].isna().sum())
        for col in COLUMNS:
            counts = df[col].dropna().str.len().value_counts()
            length_counts[col] = length_counts[col].add(counts, fill_value=0)
        hashes = pd.util.hash_pandas_object(df, index=False).tolist()
        before = len(seen)
        seen.update(hashes)
        duplicates += len(hashes) - (len(seen) - before)
    stats = {}
    for col, counts in length_counts.items():
        counts = counts.sort_index()
        if counts.empty:
            continue
        cum = counts.cumsum()
        total = cum.iloc[-1]
        stats[col] = {
            "min": int(counts.index[0]),
            "median": int(cum[cum >= total * 0.5].index[0]),
            "p95": int(cum[cum >= total * 0.95].index[0]),
            "max": int(counts.index[-1]),
        }
    return rows, {"nulls": nulls, "empty": empty, "null_systems": null_systems, "duplicates": duplicates, "chars": stats}


def convert(path, out):
    rows = 0
    with open(out, "w", encoding="utf-8") as f:
        for df in batches(path):
            for prompt, completion, system in zip(df["prompt"], df["completion"], df["system"]):
                messages = []
                if system is not None:
                    messages.append({"role": "system", "content": system})
                messages.append({"role": "user", "content": prompt})
                messages.append({"role": "assistant", "content": completion})
                f.write(json.dumps({"messages": messages}, ensure_ascii=False))
                f.write("\n")
                rows += 1
    return rows, {}


def main():
    phase, path = sys.argv[1], sys.argv[2]
    start = time.perf_counter()
    if phase == "validate":
        rows, extra = validate(path)
    else:
        rows, extra = convert(path, sys.argv[3])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"phase": phase, "rows": rows, "seconds": seconds, "peak_rss_kb": peak, **extra}))


if __name__ == "__main__":
    main()
