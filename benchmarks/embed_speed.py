"""all-MiniLM-L6-v2 sentence-embedding throughput: lmstack's `SentenceEmbedder` against
sentence-transformers on the same package files, same sentences, same batch size, interleaved repeats.
Also reports the agreement of the vectors (min cosine).

    .venv/bin/python -m benchmarks.embed_speed            # ~2 min on 2 cores
    .venv/bin/python -m benchmarks.embed_speed --quick
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import time

import torch

from benchmarks.common import markdown_table, median, write_results
from lmstack.augment.rag.embed import SentenceEmbedder
from lmstack.weights.minilm import minilm_dir


def sentences(n: int) -> list[str]:
    """`n` real sentences of varied length: docstrings of standard-library modules, split at full stops."""
    import argparse as m1
    import collections as m2
    import json as m3
    import pathlib as m4
    import textwrap as m5
    import unittest.case as m6

    text = " ".join(inspect.getsource(m) for m in (m1, m2, m3, m4, m5, m6))
    parts = [re.sub(r"\s+", " ", s).strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    parts = [p for p in parts if 3 <= len(p.split()) <= 120]
    return (parts * (n // len(parts) + 1))[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.repeats = 256, 1
    load_before = os.getloadavg()
    texts = sentences(args.n)
    ours = SentenceEmbedder.from_pretrained(batch_size=args.batch_size)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    systems = {
        "lmstack": lambda xs: ours.encode(xs),
        "sentence-transformers": lambda xs: torch.from_numpy(st.encode(xs, batch_size=args.batch_size)),
    }
    for fn in systems.values():  # warm-up
        fn(texts[: args.batch_size])
    times: dict[str, list[float]] = {k: [] for k in systems}
    vecs = {}
    for r in range(args.repeats):
        for name, fn in systems.items():
            t = time.perf_counter()
            vecs[name] = fn(texts)
            times[name].append(time.perf_counter() - t)
            print(f"[{r + 1}/{args.repeats}] {name}: {args.n / times[name][-1]:.0f} sentences/s", flush=True)
    rate = {k: args.n / median(v) for k, v in times.items()}
    cos = torch.nn.functional.cosine_similarity(vecs["lmstack"], vecs["sentence-transformers"]).min().item()
    ratio = rate["lmstack"] / rate["sentence-transformers"]
    load_after = os.getloadavg()
    rows = [[k, f"{v:.0f}", f"{v / rate['sentence-transformers']:.2f}×"] for k, v in rate.items()]
    notes = (
        f"{args.n} sentences (standard-library docstrings and comments, 3–120 words), batch {args.batch_size}, "
        f"fp32, medians of {args.repeats} interleaved repeats. Min cosine between the two systems' vectors: "
        f"{cos:.7f}. Goal: ratio ≥ 1.0×. Load average {load_before[0]:.1f} before and {load_after[0]:.1f} after "
        "(other processes shared the cores)."
    )
    write_results(
        "embed_speed",
        {
            "n": args.n,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "sentences_per_s": {k: round(v, 1) for k, v in rate.items()},
            "runs_s": times,
            "ratio": round(ratio, 3),
            "min_cosine": cos,
            "load_average": [load_before, load_after],
        },
        markdown_table(["system", "sentences/s", "ratio"], rows),
        notes,
    )
    print(markdown_table(["system", "sentences/s", "ratio"], rows))


if __name__ == "__main__":
    main()
