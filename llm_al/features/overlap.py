"""Overlap of examples with a pre-training-like reference corpus, and with the test set.

Fine-tuned models produce test words seen only in pre-training (docs/research-protocol.md), so a
subset's overlap with pre-training-like text may explain its score. Measured three ways: exact word
n-gram overlap against an on-disk index (like lm-evaluation-harness's decontamination), vocabulary
overlap, and DSIR's hashed-n-gram KL divergence (Xie et al. 2023).

    index = build_index("pydoc", "cache/pydoc-8gram")       # a reference spec or any iterable of texts
    per_example = example_overlap(index, [ex.text for ex in pool.examples])  # dict of (N,) arrays

Hashes: each word once with blake2b-64 (stable across processes and machines; never `hash()`); an
n-gram is sum_j w[i+j] * P^(n-1-j) mod 2^64 then the splitmix64 finaliser, for every position of a
batch in n vectorised steps; n-grams never cross documents. An index is a folder of `ngrams.npy`
(sorted unique n-gram hashes), `vocab.npy` (sorted unique word hashes) and `meta.json`, built in
bounded memory (sorted runs of `chunk_tokens` n-grams, then a k-way block merge) in a temporary
folder renamed into place, and queried by binary search on memory maps. Reference corpora (files,
folders of shards, Parquet, saved datasets, hub ids; all streamed) are read by llm_al/data/reference.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from pathlib import Path

import numpy as np

from llm_al.errors import ConfigError, DataError, UserError
from llm_al.io import write_json
from llm_al.data.reference import fingerprint_files, reference_texts  # noqa: F401 (re-exported: read corpora here)
from llm_al.registry import Registry

INDEX_FORMAT, INDEX_VERSION = "llm_al.ngram_index", 1
_P = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the n-gram polynomial
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64
_BATCH_CHARS = 1 << 20  # documents are hashed in batches of about this many characters
_MERGE_VALUES = 1 << 21  # values buffered across all runs of a merge (~16 MB, x3 with copies)

TOKENIZERS: Registry[Callable[[str], list[str]]] = Registry("tokenizer")
_WORD = re.compile(r"\w+")


# ---------------------------------------------------------------- words and hashes


@TOKENIZERS.register("words", "lowercased runs of Unicode word characters (regex \\w+)")
def words(text: str) -> list[str]:
    """Lowercased Unicode `\\w+` tokens: "Don't stop, Zoë!" -> ['don', 't', 'stop', 'zoë']."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=1 << 18)
def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def word_hashes(tokens: Sequence[str]) -> np.ndarray:
    """(L,) uint64 blake2b-64 hashes of the tokens (stable across processes)."""
    return np.fromiter(map(_word_hash, tokens), dtype=np.uint64, count=len(tokens))


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place: spreads every input bit over the whole hash."""
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """(L,) word hashes -> (max(L - n + 1, 0),) hashes of the n-grams starting at each position."""
    m = len(hashes) - n + 1
    if m <= 0:
        return np.empty(0, np.uint64)
    acc = np.array(hashes[:m], dtype=np.uint64)  # (m,), a copy
    for j in range(1, n):  # n vectorised steps, not one Python step per n-gram
        acc *= _P  # uint64 arithmetic wraps: the polynomial is mod 2^64
        acc += hashes[j : j + m]
    return _mix(acc)


def hash_batch(texts: Sequence[str], n: int, tokenize: Callable[[str], list[str]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Word hashes (W,), their document (W,), n-gram hashes (G,), their document (G,)."""
    toks = [tokenize(t) for t in texts]
    lens = np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))
    w = word_hashes(list(chain.from_iterable(toks)))  # (W,)
    wdoc = np.repeat(np.arange(len(toks)), lens)  # (W,)
    g = ngram_hashes(w, n)  # (W - n + 1,) windows over the concatenation ...
    keep = wdoc[: len(g)] == wdoc[n - 1 :] if len(g) else np.empty(0, bool)  # ... inside one document
    return w, wdoc, g[keep], wdoc[: len(g)][keep]


def sorted_unique(x: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Sorted distinct values. Not np.unique: numpy >= 2.3 dedups uint64 by hashing first, which
    is ~100x slower than sorting for millions of values."""
    if in_place:
        x.sort()
    else:
        x = np.sort(x)
    keep = np.empty(len(x), bool)
    keep[:1] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


def member(sorted_hashes: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(Q,) bool: which queries occur in the sorted array (binary search, O(Q log G))."""
    queries = np.asarray(queries, dtype=np.uint64)
    if len(sorted_hashes) == 0 or len(queries) == 0:
        return np.zeros(len(queries), bool)
    order = np.argsort(queries)  # sorted keys let searchsorted reuse its bounds: fewer cache misses
    idx = np.searchsorted(sorted_hashes, queries[order])
    np.minimum(idx, len(sorted_hashes) - 1, out=idx)
    found = np.empty(len(queries), bool)
    found[order] = sorted_hashes[idx] == queries[order]
    return found


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


# ---------------------------------------------------------------- the index


@dataclass(frozen=True)
class NgramIndex:
    """A built n-gram index; the arrays are memory-mapped, read-only."""

    path: Path
    meta: dict
    ngrams: np.ndarray  # (G,) sorted unique uint64 n-gram hashes
    vocab: np.ndarray  # (V,) sorted unique uint64 word hashes

    @classmethod
    def load(cls, path: str | os.PathLike) -> NgramIndex:
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            ngrams = np.load(path / "ngrams.npy", mmap_mode="r")
            vocab = np.load(path / "vocab.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataError(f"not a readable n-gram index ({type(e).__name__}: {e})", str(path)) from None
        if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
            raise DataError(f"index format {meta.get('format')!r} version {meta.get('version')!r}; "
                            f"this code reads {INDEX_FORMAT!r} version {INDEX_VERSION}: rebuild it", str(path))
        return cls(path, meta, ngrams, vocab)

    @property
    def n(self) -> int:
        return int(self.meta["n"])

    @property
    def tokenizer(self) -> str:
        return str(self.meta["tokenizer"])

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """(Q,) bool: which n-gram hashes occur in the reference."""
        return member(self.ngrams, hashes)

    def knows_words(self, hashes: np.ndarray) -> np.ndarray:
        """(Q,) bool: which word hashes occur in the reference vocabulary."""
        return member(self.vocab, hashes)


def text_batches(texts: Iterable[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for t in texts:
        if not isinstance(t, str):
            raise DataError(f"reference documents must be text, got {type(t).__name__}")
        batch.append(t)
        size += len(t)
        if size >= _BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def build_index(texts: Iterable[str] | str | os.PathLike, out_dir: str | os.PathLike, n: int = 8,
                chunk_tokens: int = 5_000_000, *, tokenizer: str = "words", fingerprint: str | None = None,
                field: str = "text", split: str = "train") -> NgramIndex:
    """Build (or reuse) the n-gram index of a reference corpus in `out_dir`.

    `texts` is any iterable of documents, or a spec for `reference_texts` (a path, a hub id or
    "pydoc", read with `field` and `split`; then `fingerprint` defaults to
    `fingerprint_files([spec], field, split=split)`). With a `fingerprint`, an index already
    in `out_dir` built from the same fingerprint, `n` and tokenizer is reused as it is; without
    one, the index is always rebuilt. Peak memory is about 2 x 8 bytes x `chunk_tokens` (80 MB by
    default) plus the vocabulary and the merge buffers (~50 MB), whatever the corpus size."""
    n, chunk_tokens = positive_int("n", n), positive_int("chunk_tokens", chunk_tokens)
    tokenize = TOKENIZERS.get(tokenizer).fn
    label = "the reference texts"
    if isinstance(texts, (str, os.PathLike)):
        label = str(texts)
        fingerprint = fingerprint if fingerprint is not None else fingerprint_files([texts], field, split=split)
        texts = reference_texts(texts, field, split=split)
    out = Path(out_dir)
    want = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "n": n, "tokenizer": tokenizer,
            "fingerprint": fingerprint}

    def reusable() -> bool:
        meta = _read_meta(out)
        return fingerprint is not None and meta is not None and all(meta.get(k) == v for k, v in want.items())

    if reusable():
        return NgramIndex.load(out)
    # meta read again: another process (a sweep worker) may have just moved its build into place
    if out.exists() and not (out.is_dir() and (_read_meta(out) is not None or not any(out.iterdir()))):
        raise UserError(f"{out} exists and is not an n-gram index; refusing to overwrite it")

    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        runs: list[Path] = []
        buf: list[np.ndarray] = []
        vocab, vbuf = np.empty(0, np.uint64), []
        docs = tokens = occurrences = buffered = 0
        content = hashlib.sha256()
        for batch in text_batches(texts):
            for t in batch:
                content.update(t.encode("utf-8", "surrogatepass") + b"\0")
            w, _, g, _ = hash_batch(batch, n, tokenize)
            docs, tokens, occurrences = docs + len(batch), tokens + len(w), occurrences + len(g)
            buf.append(g)
            vbuf.append(sorted_unique(w))
            buffered += len(g)
            if buffered >= chunk_tokens:
                buf = [_flush(buf, chunk_tokens, tmp, runs)]
                buffered = len(buf[0])
                vocab, vbuf = sorted_unique(np.concatenate([vocab, *vbuf])), []
        if buffered:
            runs.append(_write_run(tmp, len(runs), np.concatenate(buf)))
        vocab = sorted_unique(np.concatenate([vocab, *vbuf]))
        if tokens == 0:
            raise UserError(f"the reference {label} is empty: {docs} documents and no words")
        if occurrences == 0:
            raise UserError(f"the reference {label} has {tokens} words but no document of at least "
                            f"n={n} words, so no n-grams")
        distinct = _merge_runs(runs, tmp / "ngrams.npy")
        np.save(tmp / "vocab.npy", vocab)
        write_json(tmp / "meta.json", {
            **want, "source": label, "hash": "blake2b-64 words; polynomial mod 2^64 + splitmix64 n-grams",
            "documents": docs, "tokens": tokens, "ngram_occurrences": occurrences, "ngrams": distinct,
            "vocab": len(vocab), "content_sha256": content.hexdigest(), "runs": len(runs),
            "chunk_tokens": chunk_tokens, "build_seconds": round(time.perf_counter() - start, 3)})
        _install(tmp, out, reusable)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return NgramIndex.load(out)


def _install(tmp: Path, out: Path, reusable: Callable[[], bool]) -> None:
    """Move the index built in `tmp` to `out`, unless an equal one (`reusable()`) got there first."""
    if reusable():                          # another process built the same index meanwhile: keep it
        return
    try:
        os.rename(tmp, out)                 # atomic; fails while a (non-empty) index is there
    except OSError:
        if not out.exists():
            raise
        if not reusable():                  # an index of another corpus or version (else: keep the equal one)
            try:
                _replace_dir(tmp, out)
            except OSError:
                if not reusable():          # two replacements raced; only an equal index may stand in
                    raise


def _read_meta(path: Path) -> dict | None:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == INDEX_FORMAT else None


def _flush(buf: list[np.ndarray], chunk_tokens: int, folder: Path, runs: list[Path]) -> np.ndarray:
    """Write the full chunks of the buffered hashes as sorted runs; return the remainder. Peak
    memory is about 2 x 8 bytes x chunk_tokens (the pieces, then their concatenation)."""
    flat = np.concatenate(buf)
    buf.clear()
    full = len(flat) - len(flat) % chunk_tokens
    for s in range(0, full, chunk_tokens):
        runs.append(_write_run(folder, len(runs), flat[s : s + chunk_tokens]))
    return flat[full:].copy()  # a view would keep `flat` alive


def _write_run(folder: Path, i: int, hashes: np.ndarray) -> Path:
    path = folder / f"run-{i:06d}.npy"
    np.save(path, sorted_unique(hashes, in_place=True))  # `hashes` is the caller's scratch buffer
    return path


def _npy_header(length: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<u8", "fortran_order": False, "shape": (length,)})
    return buf.getvalue()


def _npy_data(path: Path) -> tuple[int, int]:
    """(byte offset of the data, length) of a 1-D uint64 .npy file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        assert dtype == np.dtype("<u8") and len(shape) == 1, f"{path}: {dtype} {shape}, expected 1-D uint64"
        return f.tell(), shape[0]


def _merge_runs(runs: list[Path], out: Path, block: int | None = None) -> int:
    """K-way merge of sorted unique runs into one sorted unique .npy; deletes the runs and returns
    the output length. Memory: `block` values per run (default: ~2M values in all).

    Each step tops every run's buffer up to `block` values (reading each run once, in order, with
    no file left open) and emits all buffered values <= the smallest of the buffers' last values
    (the pivot). Unread values of a run exceed its buffer's last value, itself >= the pivot, so all
    that is left exceeds all that was emitted: the output is sorted and unique. The run that set
    the pivot empties its buffer, so every step makes progress."""
    if len(runs) == 1:
        os.replace(runs[0], out)
        return len(np.load(out, mmap_mode="r"))
    block = block or max(1 << 12, _MERGE_VALUES // len(runs))
    offset, left = (list(x) for x in zip(*map(_npy_data, runs)))
    bufs, total = [np.empty(0, np.uint64) for _ in runs], 0
    header = _npy_header(sum(left))  # a 1-D uint64 header is 128 bytes whatever the length
    with open(out, "wb") as w:
        w.write(header)
        while True:
            for i, run in enumerate(runs):
                if len(bufs[i]) < block and left[i]:
                    count = min(block - len(bufs[i]), left[i])
                    with open(run, "rb") as f:
                        f.seek(offset[i])
                        bufs[i] = np.concatenate([bufs[i], np.frombuffer(f.read(8 * count), "<u8")])
                    offset[i], left[i] = offset[i] + 8 * count, left[i] - count
            live = [i for i in range(len(runs)) if len(bufs[i])]
            if not live:
                break
            pivot = min(bufs[i][-1] for i in live)
            parts = []
            for i in live:
                take = int(np.searchsorted(bufs[i], pivot, side="right"))
                parts.append(bufs[i][:take])
                bufs[i] = bufs[i][take:]
            merged = sorted_unique(np.concatenate(parts))
            w.write(merged.astype("<u8", copy=False).tobytes())
            total += len(merged)
        final = _npy_header(total)
        assert len(final) == len(header), f"npy header changed size: {len(header)} -> {len(final)}"
        w.seek(0)
        w.write(final)
    for r in runs:
        r.unlink()
    return total


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an old index there is moved aside, then deleted."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old)
