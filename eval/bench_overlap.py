"""Benchmark of llm_al.features.overlap: build 8-gram indexes over 2M, 20M and 100M synthetic tokens (and the
20M corpus read back from .jsonl.gz and Parquet shards on disk), then query them.

    .venv/bin/python eval/bench_overlap.py      # ~3-4 min on 2 idle CPU cores; ~2.5 GB of temp disk

The corpus samples words from the vocabulary of the standard library's `pydoc_data.topics`, with
their real frequencies, into documents of 200-800 words (seeded, streamed from a generator: never
held in memory; a larger corpus starts with the smaller ones). Each build runs in a child process so
its peak RSS is its own (VmHWM: ru_maxrss is not, a spawned child inherits its parent's peak
through exec); a child that only imports the package gives the baseline. The
shard rows time `reference_texts` (gzip + JSON, Parquet batches) on top of the build. Queries:
10,000 examples of 30 words, half copied from the first documents (in every index) and half novel.
The printed report, with the machine's load averages before and after (the machine is shared), is
also written to eval/results/bench_overlap.txt.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from llm_al.io import write_text
from llm_al.features.overlap import NgramIndex, hash_batch, build_index, reference_texts, words
from llm_al.features.overlap_stats import example_overlap

TOKENS, SMALL_TOKENS, LARGE_TOKENS = 20_000_000, 2_000_000, 100_000_000
BLOCK, CHUNK, SHARD_TOKENS = 100_000, 5_000_000, 4_000_000  # CHUNK: the default chunk_tokens
N, QUERIES, QUERY_WORDS, SEED = 8, 10_000, 30, 0
RESULT = Path(__file__).parent / "results" / "bench_overlap.txt"


def pydoc_vocabulary() -> tuple[list[str], np.ndarray]:
    counts = Counter(w for t in reference_texts("pydoc") for w in words(t))
    vocab = sorted(counts)
    freq = np.array([counts[w] for w in vocab], dtype=np.float64)
    return vocab, freq / freq.sum()


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MB. Not ru_maxrss: Linux carries the parent's
    peak into a spawned child's ru_maxrss across exec, which would charge the child for the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def corpus(tokens: int, seed: int = SEED):
    """Documents of 200-800 sampled words, drawn in blocks of 100k tokens, so the first k blocks of a
    larger corpus are exactly a smaller one."""
    vocab, p = pydoc_vocabulary()
    rng = np.random.default_rng(seed)
    for _ in range(tokens // BLOCK):
        ids = rng.choice(len(vocab), size=BLOCK, p=p).tolist()  # (BLOCK,)
        cuts = np.cumsum(rng.integers(200, 801, size=BLOCK // 200)).tolist()
        start = 0
        for end in cuts:
            yield " ".join(map(vocab.__getitem__, ids[start:min(end, BLOCK)]))
            if end >= BLOCK:
                break
            start = end


def write_shards(folder: Path, tokens: int, fmt: str) -> int:
    """Write the corpus of `tokens` as .jsonl.gz (gzip level 1) or .parquet shards of ~SHARD_TOKENS
    tokens each, streamed; returns the bytes written."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    shard, docs, size = 0, [], 0

    def flush():
        nonlocal shard, docs, size
        path = folder / f"part-{shard:03d}.{'jsonl.gz' if fmt == 'jsonl.gz' else 'parquet'}"
        if fmt == "jsonl.gz":
            with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
                f.writelines(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs))
        else:
            pq.write_table(pa.table({"text": docs}), path, row_group_size=1000)
        shard, docs, size = shard + 1, [], 0

    for doc in corpus(tokens):
        docs.append(doc)
        size += doc.count(" ") + 1
        if size >= SHARD_TOKENS:
            flush()
    if docs:
        flush()
    return sum(f.stat().st_size for f in folder.iterdir())


def child_build_spec(spec: str, out_dir: str, chunk_tokens: int) -> None:
    """Run in a child: build from a reference spec (files on disk), print timings and peak RSS."""
    start = time.perf_counter()
    index = build_index(spec, out_dir, n=N, chunk_tokens=chunk_tokens)
    print(json.dumps({"seconds": time.perf_counter() - start, "gen_seconds": 0.0, "meta": index.meta,
                      "rss_mb": peak_rss_mb()}))


def child_build(tokens: int, out_dir: str, chunk_tokens: int) -> None:
    """Run in a child: build, print timings and peak RSS as JSON."""
    gen_seconds = 0.0

    def timed(docs):
        nonlocal gen_seconds
        it = iter(docs)
        while True:
            t = time.perf_counter()
            doc = next(it, None)
            gen_seconds += time.perf_counter() - t
            if doc is None:
                return
            yield doc

    start = time.perf_counter()
    index = build_index(timed(corpus(tokens)), out_dir, n=N, chunk_tokens=chunk_tokens)
    total = time.perf_counter() - start
    print(json.dumps({"seconds": total, "gen_seconds": gen_seconds, "meta": index.meta,
                      "rss_mb": peak_rss_mb()}))


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def query_examples() -> list[str]:
    rng = np.random.default_rng(SEED + 1)
    docs = [d for d in corpus(SMALL_TOKENS) if len(d.split()) > QUERY_WORDS]  # inside both indexes
    copied = []
    for d in rng.integers(0, len(docs), QUERIES // 2):
        w = docs[d].split()
        s = rng.integers(0, len(w) - QUERY_WORDS)
        copied.append(" ".join(w[s : s + QUERY_WORDS]))
    vocab, p = pydoc_vocabulary()
    novel = [" ".join(vocab[i] for i in rng.choice(len(vocab), QUERY_WORDS, p=p)) for _ in range(QUERIES // 2)]
    return copied + novel


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    caches = Path("/sys/devices/system/cpu/cpu0/cache")
    l2_l3 = ", ".join(f"L{(c / 'level').read_text().strip()} {(c / 'size').read_text().strip()}"
                      for c in sorted(caches.glob("index[23]")) if (c / "size").exists())
    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, {l2_l3 or 'caches unknown'}; "
            f"Python {platform.python_version()}, numpy {np.__version__}")


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def l3_mb() -> float:
    """The L3 size the OS reports for cpu0 in MB (inf when unknown)."""
    for c in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        if (c / "level").exists() and (c / "level").read_text().strip() == "3":
            size = (c / "size").read_text().strip().upper()
            scale = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(size[-1:], 1 / 2**20)
            return float(size.rstrip("KMG")) * scale
    return float("inf")


def main() -> None:
    lines = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"bench_overlap: {N}-gram index build and query (llm_al.features.overlap), {time.strftime('%Y-%m-%d %H:%M')}")
    say(f"machine: {machine()}")
    say(f"load average (1/5/15 min) at the start: {load()} (a shared machine: other jobs ran alongside)")
    say(f"corpus: {SMALL_TOKENS / 1e6:.0f}M / {TOKENS / 1e6:.0f}M / {LARGE_TOKENS / 1e6:.0f}M synthetic tokens, "
        f"pydoc_data vocabulary with its frequencies, documents of 200-800 words, seed {SEED}; streamed from a "
        f"generator, never held in memory")
    say()
    base = run_child("--baseline")["rss_mb"]
    gen = run_child("--generate", str(SMALL_TOKENS))["rss_mb"]
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as tmp:
        shard_bytes = {fmt: write_shards(Path(tmp) / f"shards-{fmt}", TOKENS, fmt) for fmt in ("jsonl.gz", "parquet")}
        # (label, folder, child args, chunk_tokens)
        plan = [("full", "full", ("--build", str(TOKENS)), CHUNK),
                ("small (1/10)", "small", ("--build", str(SMALL_TOKENS)), CHUNK),
                ("full, 1M-token chunks", "full1m", ("--build", str(TOKENS)), 1_000_000),
                ("large (5x)", "large", ("--build", str(LARGE_TOKENS)), CHUNK),
                ("full, .jsonl.gz shards", "fulljsonl", ("--build-spec", f"{tmp}/shards-jsonl.gz"), CHUNK),
                ("full, .parquet shards", "fullparquet", ("--build-spec", f"{tmp}/shards-parquet"), CHUNK)]
        say("build                       tokens   documents   distinct 8-grams  chunk  runs  build s  "
            "(gen s)  tokens/s  peak RSS MB  disk MB")
        disk_mb, built = {}, {}
        for label, folder, (mode, what), chunk in plan:
            b = run_child(mode, what, f"{tmp}/{folder}", str(chunk))
            m, own = b["meta"], b["seconds"] - b["gen_seconds"]
            built[folder] = m
            disk = disk_mb[folder] = sum(f.stat().st_size for f in Path(f"{tmp}/{folder}").iterdir()) / 2**20
            say(f"{label:<22} {m['tokens']:>11,} {m['documents']:>11,} {m['ngrams']:>18,} {chunk / 1e6:>5.0f}M "
                f"{m['runs']:>5} {own:>8.1f} {b['gen_seconds']:>8.1f} {m['tokens'] / own:>9.2e} "
                f"{b['rss_mb']:>12.0f} {disk:>8.1f}")
        reference = np.load(f"{tmp}/full/ngrams.npy", mmap_mode="r")
        same = all(np.array_equal(reference, np.load(f"{tmp}/{f}/ngrams.npy", mmap_mode="r"))
                   for f in ("fulljsonl", "fullparquet"))
        say(f"build s excludes generating the text (gen s); tokens/s = tokens / build s. The shard rows read "
            f"{shard_bytes['jsonl.gz'] / 2**20:.0f} MB of .jsonl.gz / {shard_bytes['parquet'] / 2**20:.0f} MB of "
            f".parquet ({SHARD_TOKENS / 1e6:.0f}M-token shards) through reference_texts, so their build s includes "
            f"reading and decoding; their index equals the generator's: {same}. Peak RSS of a child that only "
            f"imports llm_al.features.overlap: {base:.0f} MB; that only generates the text: {gen:.0f} MB. Temporary disk "
            f"during a build peaks at about twice the index (the sorted runs, then the merged index).")
        say()

        examples = query_examples()
        hashing = best_of(lambda: hash_batch(examples, N, words))
        _, _, grams, _ = hash_batch(examples, N, words)
        say(f"query: {len(examples):,} examples of {QUERY_WORDS} words ({len(grams):,} 8-grams; half copied "
            f"from the first 2M tokens, so in every index, half novel); best of 5, warm page cache")
        say("index          distinct 8-grams  log2(G)  example_overlap s  examples/s  lookup s  ns/8-gram  "
            "mean overlap")
        rows = {}
        for label, folder in (("small (1/10)", "small"), ("full", "full"), ("large (5x)", "large")):
            index = NgramIndex.load(f"{tmp}/{folder}")
            total = best_of(lambda index=index: example_overlap(index, examples))
            lookup = best_of(lambda index=index: index.contains(grams))
            overlap = float(example_overlap(index, examples)["ngram_overlap"].mean())
            rows[folder] = g, _, _ = len(index.ngrams), lookup, total
            say(f"{label:<14} {g:>16,} {np.log2(g):>8.1f} {total:>18.3f} {len(examples) / total:>11,.0f} "
                f"{lookup:>9.4f} {1e9 * lookup / len(grams):>10.0f} {overlap:>13.3f}")
        (g_s, l_s, t_s), (g_f, l_f, t_f), (g_l, l_l, t_l) = rows["small"], rows["full"], rows["large"]
        say(f"tokenising + hashing the examples alone: {hashing:.3f} s (independent of the index); "
            f"lookup = NgramIndex.contains, a binary search")
        say()
        say(f"small -> full (G x{g_f / g_s:.1f}): example_overlap x{t_f / t_s:.2f}, lookup alone x{l_f / l_s:.2f}, "
            f"log2(G) (comparisons per lookup) x{np.log2(g_f) / np.log2(g_s):.2f}.")
        say(f"full -> large (G x{g_l / g_f:.1f}): example_overlap x{t_l / t_f:.2f}, lookup alone x{l_l / l_f:.2f}, "
            f"log2(G) x{np.log2(g_l) / np.log2(g_f):.2f}.")
        full = NgramIndex.load(f"{tmp}/full")
        stored, rng, ns = np.asarray(full.ngrams), np.random.default_rng(SEED + 2), []
        for part in (1, 10, 100):  # same index, same log2(G) comparisons; only the memory touched differs
            q = stored[rng.integers(0, len(stored) // part, len(grams))]
            ns.append(1e9 * best_of(lambda q=q: full.contains(q)) / len(q))
        say(f"control, full index, {len(grams):,} stored 8-grams as queries drawn from all of it / its first "
            f"1/10 / its first 1/100: {ns[0]:.0f} / {ns[1]:.0f} / {ns[2]:.0f} ns per lookup.")
        l3 = l3_mb()
        fits = ", ".join(f"{name} {disk_mb[f]:.0f} MB ({'fits' if disk_mb[f] < l3 else 'does not fit'})"
                         for name, f in (("small", "small"), ("full", "full"), ("large", "large")))
        say(f"The comparisons grow logarithmically; the rest of the lookup growth is memory (indexes vs an L3 of "
            f"{l3:.0f} MB as the OS reports it: {fits}). Tokenising and hashing the examples ({hashing:.3f} s) "
            f"does not depend on the index.")
    say()
    say(f"load average (1/5/15 min) at the end: {load()}")
    write_text(RESULT, "\n".join(lines) + "\n")
    print(f"written to {RESULT}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--build"]:
        child_build(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1:2] == ["--build-spec"]:
        child_build_spec(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1:2] == ["--generate"]:
        for _ in corpus(int(sys.argv[2])):
            pass
        print(json.dumps({"rss_mb": peak_rss_mb()}))
    elif sys.argv[1:2] == ["--baseline"]:
        import llm_al.features.overlap  # noqa: F401

        print(json.dumps({"rss_mb": peak_rss_mb()}))
    else:
        main()
