"""Query synthesis: write new prompts near the ones the model is least sure about.

    llm-al annotate synthesize prompts.jsonl --out new_prompts.jsonl --n 50 [--from-strategy greedy_logprob]
    llm-al annotate export new_prompts.jsonl --budget 50 --out to_annotate.csv     # then annotate as usual

1. Rank the pool by a label-free strategy (default `greedy_logprob`: lowest mean log-prob of the
   model's own greedy answer first) and keep the top n * seeds_per_prompt prompts.
2. Few-shot prompts: each shows `seeds_per_prompt` of them ("Here are example requests ... Write one
   new request of the same kind:"); the model samples one new request per few-shot prompt.
3. Normalise (strip, collapse whitespace; drop empty or over-long ones) and de-duplicate against
   the pool's requests and each other: exact after normalisation, and near-duplicates whose
   character 3-gram Jaccard similarity (case-folded) is >= `threshold` (default 0.8).
4. Repeat (fresh few-shot groups) until n are kept or `max_rounds` is reached; write the survivors
   atomically as an unlabelled pool file (JSON Lines, the input pool's prompt field, plus
   `synthesized_from`: the ids of the few-shot examples).

The pure parts (normalise_request, char_ngrams, near_duplicate_of, deduplicate) are plain functions
with hand-checked tests; only `synthesize` touches the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from llm_al import models
from llm_al.config import ModelConfig, parse_strategy
from llm_al.data.pool import Example, Pool, is_missing, load_pool
from llm_al.errors import UserError
from llm_al.features.formatting import prompt_text
from llm_al.features.probes import provider
from llm_al.io import check_output, write_text
from llm_al.run.pipeline import compute_features
from llm_al.seeds import rng
from llm_al.strategies.base import STRATEGIES, run_strategy
from llm_al.strategies.generation import generate_ids
from llm_al.strategies.needs import strategy_needs
from llm_al.types import DIRECT_FEATURES, LOSS_FEATURES

FEW_SHOT_HEADER = "Here are example requests:"
FEW_SHOT_ASK = "Write one new request of the same kind. Reply with the request only."
_CONTEXT_COLUMNS = ("system", "source_lang", "target_lang")   # copied from the first few-shot example


# ---------------------------------------------------------------------------- pure: normalise, dedup
def normalise_request(text: str, max_chars: int) -> str | None:
    """`text` stripped with every whitespace run collapsed to one space; None when empty or longer
    than `max_chars` characters."""
    norm = " ".join(str(text).split())
    return norm if norm and len(norm) <= max_chars else None


def char_ngrams(text: str, n: int = 3) -> set[str]:
    """Case-folded character n-grams of the whitespace-normalised text; a text shorter than n is its
    own single gram (so two short texts compare as equal or disjoint)."""
    t = " ".join(text.casefold().split())
    return {t[i: i + n] for i in range(len(t) - n + 1)} if len(t) >= n else {t}


def _gram_coords(texts: Sequence[str], vocab: dict[str, int], n: int) -> tuple[list[int], list[int]]:
    """(rows, columns) of the ones of a binary text x n-gram matrix; new grams are added to vocab."""
    rows, cols = [], []
    for r, t in enumerate(texts):
        for g in char_ngrams(t, n):
            rows.append(r)
            cols.append(vocab.setdefault(g, len(vocab)))
    return rows, cols


def jaccard_matrix(a: Sequence[str], b: Sequence[str], n: int = 3) -> np.ndarray:
    """(len(a), len(b)) Jaccard similarity of the character n-gram sets, via one sparse product."""
    from scipy import sparse

    vocab: dict[str, int] = {}
    ra, ca = _gram_coords(a, vocab, n)
    rb, cb = _gram_coords(b, vocab, n)
    A = sparse.csr_matrix((np.ones(len(ra)), (ra, ca)), shape=(len(a), len(vocab)))     # (|a|, G)
    B = sparse.csr_matrix((np.ones(len(rb)), (rb, cb)), shape=(len(b), len(vocab)))     # (|b|, G)
    inter = (A @ B.T).toarray()                                          # (|a|, |b|) shared grams
    size_a = np.asarray(A.sum(1)).ravel()[:, None]
    size_b = np.asarray(B.sum(1)).ravel()[None, :]
    return inter / np.maximum(size_a + size_b - inter, 1)


def deduplicate(candidates: Sequence[str], existing: Sequence[str], threshold: float = 0.8,
                n: int = 3) -> list[str | None]:
    """Why each candidate is dropped, or None if it is kept. Candidates are taken in order; one is
    dropped as "exact-pool"/"exact-new" when its text equals a pool text / an earlier kept
    candidate, and as "near-pool"/"near-new" when its n-gram Jaccard with one of them is
    >= `threshold`. Texts are compared as given (normalise them first)."""
    if not 0 < threshold <= 1:
        raise UserError(f"the near-duplicate threshold must be in (0, 1], got {threshold}")
    if not candidates:
        return []
    pool_set = set(existing)
    to_pool = jaccard_matrix(candidates, existing, n).max(1) if len(existing) else np.zeros(len(candidates))
    among = jaccard_matrix(candidates, candidates, n)                    # (C, C)
    kept: list[int] = []
    kept_texts: set[str] = set()
    why: list[str | None] = []
    for i, text in enumerate(candidates):
        if text in pool_set:
            reason = "exact-pool"
        elif text in kept_texts:
            reason = "exact-new"
        elif to_pool[i] >= threshold:
            reason = "near-pool"
        elif kept and among[i, kept].max() >= threshold:
            reason = "near-new"
        else:
            reason = None
            kept.append(i)
            kept_texts.add(text)
        why.append(reason)
    return why


# ---------------------------------------------------------------------------- the pool's prompt field
def _column(pool: Pool, fields: dict[str, str] | None) -> tuple[str, str]:
    """(kind, column) of the field a new request is written to: kind is text, messages, sharegpt or wmt."""
    if pool.shape == "mapped":
        f = fields or {}
        if "messages" in f:
            return "messages", f["messages"]
        for role in ("prompt", "instruction", "source"):
            if role in f:
                return "text", f[role]
        raise UserError(f"cannot tell which mapped column holds the prompt (fields {f}); map prompt=COLUMN")
    if pool.shape == "messages":
        return "messages", "messages"
    if pool.shape == "sharegpt":
        return "sharegpt", "conversations"
    if pool.shape == "alpaca":
        return "text", "instruction"
    if pool.shape == "translation":
        return ("wmt", "translation") if "translation" in pool.examples[0].source else ("text", "source")
    return "text", "prompt"


def _wmt_pair(ex: Example) -> tuple[str, str | None, dict]:
    """(source language code, target code, pair) of a translation-dict record: the source is the
    language whose text appears in the prompt."""
    pair = ex.source["translation"]
    pair = json.loads(pair) if isinstance(pair, str) else dict(pair)
    user = ex.prompt_messages[-1]["content"]
    texts = [k for k, v in pair.items() if isinstance(v, str) and v.strip()]
    src = next((k for k in texts if pair[k] in user), texts[0])
    return src, next((k for k in pair if k != src), None), pair


def request_text(ex: Example, kind: str, column: str) -> str:
    """What the example asks, as it sits in the prompt field (the last user turn for chats)."""
    if kind == "wmt":
        src, _, pair = _wmt_pair(ex)
        return pair[src]
    value = ex.source.get(column) if kind == "text" else None
    if isinstance(value, str) and not is_missing(value) and value.strip():
        return value
    return next(m["content"] for m in reversed(ex.prompt_messages) if m["role"] == "user")


def new_record(text: str, near: Sequence[Example], kind: str, column: str) -> dict:
    """An unlabelled record holding `text` in the pool's prompt field, with the context columns
    (system prompt, languages) of the first example it was written near, and `synthesized_from`."""
    first = near[0]
    system = first.messages[0]["content"] if first.messages[0]["role"] == "system" and not first.system_injected else None
    if kind == "messages":
        rec = {column: ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]}
    elif kind == "sharegpt":
        rec = {column: ([{"from": "system", "value": system}] if system else []) + [{"from": "human", "value": text}]}
    elif kind == "wmt":
        src, tgt, _ = _wmt_pair(first)
        rec = {column: {src: text, **({tgt: None} if tgt else {})}}
    else:
        rec = {column: text}
        rec.update({c: first.source[c] for c in _CONTEXT_COLUMNS
                    if c in first.source and c != column and not is_missing(first.source[c])})
    rec["synthesized_from"] = [ex.id for ex in near]
    return rec


def few_shot_messages(requests: Sequence[str]) -> list[dict]:
    shown = "\n".join(f"{k}. {r}" for k, r in enumerate(requests, 1))
    return [{"role": "user", "content": f"{FEW_SHOT_HEADER}\n\n{shown}\n\n{FEW_SHOT_ASK}"}]


# ---------------------------------------------------------------------------- the model part
@dataclass
class SynthesisReport:
    generated: int = 0          # candidates sampled
    empty_or_long: int = 0      # dropped by normalisation
    duplicates: int = 0         # dropped as exact or near duplicates (pool or each other)
    kept: int = 0
    rounds: int = 0
    seed_examples: int = 0      # pool examples the few-shot prompts drew from
    strategy: str = ""
    path: str | None = None

    def summary(self) -> str:
        return (f"{self.generated} candidate prompts generated in {self.rounds} round(s) from {self.seed_examples} "
                f"pool prompts ranked by {self.strategy}: {self.empty_or_long} empty or over-long, "
                f"{self.duplicates} duplicates dropped, {self.kept} kept")


def synthesize(pool: Pool, order: Sequence[int], model, tokenizer, n: int, *, seeds_per_prompt: int = 3,
               seed: int = 0, temperature: float = 1.0, max_new_tokens: int = 64, max_chars: int | None = None,
               threshold: float = 0.8, max_rounds: int = 5, batch_size: int = 16,
               fields: dict[str, str] | None = None, strategy: str = "") -> tuple[list[dict], SynthesisReport]:
    """Up to `n` new unlabelled records written near pool.examples[order[:n * seeds_per_prompt]]
    (`order`: the pool ranked by the seed strategy, most wanted first), and a report."""
    check_counts(n, seeds_per_prompt, max_rounds)
    if not temperature > 0:
        raise UserError(f"temperature must be > 0, got {temperature}")
    kind, column = _column(pool, fields)
    pool_texts = [" ".join(request_text(ex, kind, column).split()) for ex in pool.examples]
    max_chars = max_chars or max(64, 2 * max(len(t) for t in pool_texts))
    seeds = [int(i) for i in order[: max(seeds_per_prompt, n * seeds_per_prompt)]]
    k = min(seeds_per_prompt, len(seeds))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
    report = SynthesisReport(seed_examples=len(seeds), strategy=strategy)
    kept_texts: list[str] = []
    records: list[dict] = []
    for r in range(max_rounds):
        need = n - len(records)
        if need <= 0:
            break
        report.rounds += 1
        if r == 0:                                       # first round: the least-sure prompts in rank order
            groups = [[seeds[(g * k + j) % len(seeds)] for j in range(k)] for g in range(need)]
        else:                                            # later rounds: fresh random groups of them
            groups = [[seeds[j] for j in rng.choice(len(seeds), k, replace=False)] for _ in range(need)]
        prompts = [prompt_text(tokenizer, few_shot_messages([pool_texts[i] for i in g])) for g in groups]
        ids = generate_ids(model, tokenizer, prompts, max_new_tokens, batch_size, samples=1,
                           temperature=temperature, seed=int(np.random.SeedSequence([int(seed), r]).generate_state(1)[0]))
        texts = [tokenizer.decode(s[0], skip_special_tokens=True) for s in ids]
        report.generated += len(texts)
        normed = [normalise_request(t, max_chars) for t in texts]
        report.empty_or_long += sum(t is None for t in normed)
        cand = [(t, g) for t, g in zip(normed, groups) if t is not None]
        why = deduplicate([t for t, _ in cand], pool_texts + kept_texts, threshold)
        report.duplicates += sum(w is not None for w in why)
        for (text, group), w in zip(cand, why):
            if w is None and len(records) < n:
                kept_texts.append(text)
                records.append(new_record(text, [pool.examples[i] for i in group], kind, column))
    report.kept = len(records)
    return records, report


def write_records(records: Sequence[dict], out: str | Path) -> Path:
    """Write `records` as JSON Lines, atomically."""
    path = Path(out).expanduser()
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise UserError(f"{out}: synthesized prompts are written as JSON Lines; use a .jsonl file name")
    if not records:
        raise UserError(f"{out}: no new prompts survived normalisation and de-duplication; nothing written "
                        "(try more rounds, a higher temperature or a higher threshold)")
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def label_free_needs(name: str, params: dict) -> set[str]:
    """The features strategy `name` needs, checked to be computable without reference responses."""
    needs = strategy_needs(name, params)
    reads = sorted(f for f in needs if f in LOSS_FEATURES | DIRECT_FEATURES | {"scorer_ifd", "length", "direct_loss"}
                   or (provider(f) is not None and provider(f).meta.get("needs_labels", False)))
    if reads:
        raise UserError(f"strategy {name!r} reads reference responses ({', '.join(reads)}), which unlabelled prompts "
                        "do not have; use a label-free one (greedy_logprob, gen_disagreement, bleu_variance, "
                        "random, or an embedding-based one such as kcenter)")
    return needs


def check_counts(n: int, seeds_per_prompt: int, max_rounds: int) -> None:
    """The counts synthesis divides by and loops over: checked before any loading or model work."""
    if n < 1 or seeds_per_prompt < 1 or max_rounds < 1:
        raise UserError(f"n ({n}), seeds_per_prompt ({seeds_per_prompt}) and max_rounds ({max_rounds}) must be >= 1")


def prepare_synthesis(pool_spec: str, out: str | Path, strategy: str, fields: dict[str, str] | None,
                      model_name: str | None, counts: tuple[int, int, int], dry_run: bool = False) -> tuple:
    """The checks and the loading `run_synthesis` (and its --dry-run) does before any model work:
    (pool, strategy name, its params, the features it needs, the ModelConfig). `counts` are
    (n, seeds_per_prompt, max_rounds), checked first."""
    check_counts(*counts)

    if Path(out).suffix.lower() not in (".jsonl", ".ndjson"):
        raise UserError(f"{out}: synthesized prompts are written as JSON Lines; use a .jsonl file name")
    check_output(out, [pool_spec], probe=not dry_run)
    name, params = parse_strategy(strategy)
    STRATEGIES.check(name, params)
    needs = label_free_needs(name, params)
    pool = load_pool(pool_spec, fields=fields, labelled=False)
    model_cfg = ModelConfig()
    if model_name:
        model_cfg.name = model_name
    return pool, name, params, needs, model_cfg


def run_synthesis(pool_spec: str, out: str | Path, n: int, *, strategy: str = "greedy_logprob",
                  seeds_per_prompt: int = 3, seed: int = 0, model_name: str | None = None,
                  fields: dict[str, str] | None = None, progress: bool = True, max_rounds: int = 5,
                  **kw) -> SynthesisReport:
    """The `llm-al annotate synthesize` command: load, rank, synthesize, write."""
    pool, name, params, needs, model_cfg = prepare_synthesis(pool_spec, out, strategy, fields, model_name,
                                                             (n, seeds_per_prompt, max_rounds))
    model, tokenizer = models.load_model(model_cfg.name, model_cfg.device, trust_remote_code=model_cfg.trust_remote_code)
    features = compute_features(pool, needs, model_cfg, model_and_tokenizer=(model, tokenizer), progress=progress)
    budget = min(len(pool), max(seeds_per_prompt, n * seeds_per_prompt))
    sel = run_strategy(name, features, budget, rng(seed, "subset"), **params)
    records, report = synthesize(pool, sel.indices.tolist(), model, tokenizer, n, seeds_per_prompt=seeds_per_prompt,
                                 seed=seed, fields=fields, strategy=strategy, max_rounds=max_rounds, **kw)
    report.path = str(write_records(records, out))
    return report
