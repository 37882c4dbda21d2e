"""`--dry-run`: the plan of a command and its estimated cost, without loading a model or writing.

    llm-al demo --dry-run                         the experiment: runs, scoring, training, evaluation
    llm-al select POOL --strategy S --budget N --out F --dry-run
    llm-al annotate export POOL --budget N --out F [--drafts] --dry-run

Counts the runs, the examples still to score (the feature caches are consulted), and the tokens
each step processes; converts them to floating-point operations with the usual 2 x params per
token for a forward pass and 6 x params for a training step; and divides by this machine's matmul
rate, measured on the spot, times an efficiency per step. The efficiencies were measured on the
2-core CPU demo (eval/results/demo-cpu.md): scoring ran at ~0.9 of the matmul rate, LoRA training
at ~0.65, greedy generation at ~0.35. On other hardware treat the times as rough.

Only configs and tokenizers are read: parameters are counted on the meta device, and the embedded
model, if it has not been converted yet, is sized from its GGUF header (its token counts are then
estimated at CHARS_PER_TOKEN).

Over 450 lines because one cost model (parameter counts, token counts, cache hits, a measured
matmul rate) serves the --dry-run of every command; each command's part is a short function.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llm_al import models

from llm_al.config import EvalConfig, ExperimentConfig, ModelConfig, parse_strategy
from llm_al.data.reference import is_hub_id, reference_units
from llm_al.errors import ConfigError, FeatureUnavailableError, UserError
from llm_al.features import probes
from llm_al.features.cache import ShardedCache, text_key
from llm_al.features.engine import loss_cache_plan
from llm_al.features.pooling import embedding_cache
from llm_al.features.formatting import prompt_text
from llm_al.features.reference_index import reference_index_dir
from llm_al.run.grid import cells
from llm_al.run.pipeline import load_data
from llm_al.run.synthesize import few_shot_messages
from llm_al.strategies.needs import needed_features
from llm_al.types import DIRECT_FEATURES, LOSS_FEATURES

EFFICIENCY = {"score": 0.9, "train": 0.65, "generate": 0.35}
CHARS_PER_TOKEN = 4
"""Token estimate for a model whose tokenizer cannot be read without converting it."""
TEMPLATE_TOKENS = 15
"""Tokens the chat template adds to an example (role markers, a default system turn): a guess."""


@dataclass
class Step:
    what: str
    tokens: int
    flops: float
    seconds: float


def matmul_rate(device: str = "cpu", seconds: float = 0.3) -> float:
    """FLOP/s of a 1024 x 1024 fp32 (CPU) or bf16 (GPU) matrix product, measured now."""
    import torch

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a = torch.randn(1024, 1024, device=device, dtype=dtype)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ a
        n += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * 1024**3 * n / (time.perf_counter() - t0)


def count_params(name: str, causal: bool = True) -> int:
    """Parameters of a causal LM (or, causal=False, any transformers model such as an embedder)
    from its config alone (built on the meta device: no weights)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(models.resolve(name))
    with torch.device("meta"):
        model = (AutoModelForCausalLM if causal else AutoModel).from_config(config)
    return sum(p.numel() for p in model.parameters())


@dataclass
class Model:
    """What a plan needs of a model: its size, its tokenizer and its feature-cache key."""

    name: str
    params: int
    tokenizer: Any = None           # None: the embedded model is not converted yet (tokens estimated)
    key: str | None = None          # models.fingerprint; None: nothing can be cached for it yet
    note: str = ""

    def tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return max(1, len(text) // CHARS_PER_TOKEN)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, example) -> int:
        """Tokens of the prompt the model answers (its chat template applied, when it is known)."""
        if self.tokenizer is None:
            return self.tokens("\n".join(m["content"] for m in example.prompt_messages))
        return self.tokens(prompt_text(self.tokenizer, example.prompt_messages))


def causal_lm(name: str) -> Model:
    """Size, tokenizer and cache key of a causal LM, reading no weights."""
    if name == models.EMBEDDED_MODEL and models.embedded_model_dir(convert=False) is None:
        from gguf import GGUFReader

        reader = GGUFReader(str(models._embedded_gguf()))           # the header: shapes, no weights read
        params = sum(int(np.prod(t.shape)) for t in reader.tensors)
        return Model(name, params, note=f"not converted yet (the first real run converts it, ~20 s): token counts "
                                       f"estimated at {CHARS_PER_TOKEN} characters a token, nothing cached")
    from transformers import AutoTokenizer

    loc = models.resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(loc)
        params = count_params(name)
    except OSError as err:
        if Path(loc).exists():
            raise UserError(f"could not read model {loc!r}: {str(err).splitlines()[0][:300]}") from None
        raise models._hub_error(name, err) from None
    return Model(name, params, tokenizer, models.fingerprint(name))


def _embedder(name: str) -> Model:
    from transformers import AutoTokenizer

    if name == models.MODEL_EMBEDDER:              # add_scoring counts its vectors in the loss pass
        raise ConfigError("model.embedder=model has no sentence-transformers encoder to embed plain text with "
                          f"(ref_similarity's passages): set --embedder to one, e.g. {models.EMBEDDED_EMBEDDER}")
    loc = models.resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(loc)
        params = count_params(name, causal=False)
    except OSError as err:
        if Path(loc).exists():
            raise UserError(f"could not read embedder {loc!r}: {str(err).splitlines()[0][:300]}") from None
        raise models._hub_error(name, err) from None
    st_config = Path(loc) / "sentence_bert_config.json"
    limit = json.loads(st_config.read_text()).get("max_seq_length") if st_config.exists() else None
    tokenizer.model_max_length = int(limit or min(tokenizer.model_max_length, 512))
    return Model(name, params, tokenizer, models.fingerprint(name))


@dataclass
class Estimate:
    """The steps of a plan, timed at this machine's matmul rate (measured at the first step)."""

    device: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rate: float | None = None

    def add(self, what: str, tokens: int, params: int, flops_per_param: float, kind: str) -> None:
        if self.rate is None:
            self.rate = matmul_rate(self.device)
        flops = flops_per_param * params * tokens
        self.steps.append(Step(what, int(tokens), flops, flops / (self.rate * EFFICIENCY[kind])))

    def lines(self) -> list[str]:
        out = [f"  measured matmul rate on {self.device}: {self.rate / 1e9:.0f} GFLOP/s"] if self.rate else []
        out.append("  estimated cost:")
        out += [f"    {st.what}: {st.tokens:,} tokens, {st.flops / 1e12:.1f} TFLOP, ~{st.seconds:.0f} s"
                for st in self.steps] or ["    no model work"]
        out += [f"    {note}" for note in self.notes]
        return out

    @property
    def seconds(self) -> float:
        return sum(st.seconds for st in self.steps)


def add_scoring(est: Estimate, examples: Sequence, needs: set[str], model_cfg: ModelConfig, lm: Model | None = None) -> None:
    """The feature work `pipeline.compute_features` would do for `needs`, as steps of `est`:
    the loss passes (the cache consulted), the scorer's passes, the embeddings (the cache
    consulted) and the model-based probes (their caches not consulted: an upper bound)."""
    cache_dir = models.cache_root() / "features"
    dtype = str(models.torch_dtype(model_cfg.dtype, est.device))
    embed_model = "embeddings" in needs and model_cfg.embedder == models.MODEL_EMBEDDER   # from the loss pass
    which = [direct for direct, group in ((False, LOSS_FEATURES), (True, DIRECT_FEATURES))
             if needs & group or (embed_model and not direct)]
    probe_needs = needs & set(probes.provided_names())
    if (which or probes.needs_model(probe_needs)) and lm is None:
        lm = causal_lm(model_cfg.name)
    for direct in which:
        _loss_pass(est, examples, lm, model_cfg.max_length, dtype, direct, cache_dir, embed=embed_model and not direct)
    if "scorer_ifd" in needs:
        if not model_cfg.scorer:
            raise FeatureUnavailableError("scorer_ifd (Superfiltering) needs a second, small scorer model: "
                                          "set model.scorer (--scorer) to a hub id or local folder")
        scorer = causal_lm(model_cfg.scorer)
        for direct in (False, True):
            _loss_pass(est, examples, scorer, model_cfg.max_length, dtype, direct, cache_dir, "scorer ")
    if "embeddings" in needs and not embed_model:
        _embedding_pass(est, examples, _embedder(model_cfg.embedder), cache_dir)
    if probe_needs:
        _probe_passes(est, examples, probe_needs, lm, model_cfg.max_length)


def _loss_pass(est, examples, lm: Model, max_length: int, dtype: str, direct: bool, cache_dir: Path,
               who: str = "", embed: bool = False) -> None:
    """A scoring pass over what its cache lacks; `embed`: and what the pooled-vector cache lacks
    (model.embedder=model: the same pass, engine.compute_model_features)."""
    label = (f"{who}score %d of {len(examples)} pool examples{' without prompts' if direct else ''} (%d cached)"
             + (", pooling the model's hidden states as embeddings" if embed else ""))
    if lm.tokenizer is None:
        tokens = sum(min(max_length, lm.tokens(ex.response) if direct else lm.tokens(ex.text) + TEMPLATE_TOKENS)
                     for ex in examples)
        est.add(label % (len(examples), 0), tokens, lm.params, 2, "score")
        return
    cache, items, keys = loss_cache_plan(lm.tokenizer, examples, cache_dir, lm.key, dtype, max_length, direct)
    todo = cache.missing(keys)
    if embed:
        todo = sorted(set(todo) | set(embedding_cache(cache_dir, lm.key, dtype, max_length).missing(keys)))
    est.add(label % (len(todo), len(items) - len(todo)), int(items.lengths[todo].sum()), lm.params, 2, "score")


def _embedding_pass(est, examples, embedder: Model, cache_dir: Path) -> None:
    # The cache layout of features.compute_embeddings (tests/test_plan.py checks the two agree).
    texts = [ex.text for ex in examples]
    todo = ShardedCache(cache_dir / f"emb-{text_key(embedder.key)}").missing([text_key(t) for t in texts])
    limit = embedder.tokenizer.model_max_length
    tokens = sum(min(limit, embedder.tokens(texts[i]) + 2) for i in todo)
    est.add(f"embed {len(todo)} of {len(texts)} pool examples ({len(texts) - len(todo)} cached) with "
            f"{embedder.name} ({_millions(embedder.params)} parameters)", tokens, embedder.params, 2, "score")


# Model-based probes: (passes over each example, what a pass reads, FLOPs per token per parameter, kind).
# "example" is prompt + response (teacher-forced); "generate" is the prompt plus eval.max_new_tokens.
PROBE_WORK = {"mc_dropout": ("mc_passes", "example", 2, "score"),
              "gradient_length": (1, "example", 6, "train"),
              "greedy": (1, "generate", 2, "generate"),
              "oracle": (1, "generate", 2, "generate"),
              "sampled": ("gen_samples", "generate", 2, "generate")}


def _probe_passes(est, examples, features: set[str], lm: Model | None, max_length: int) -> None:
    names = sorted({probes.provider(f).name for f in features})
    if "greedy" in names and "oracle" in names:
        names.remove("oracle")                  # they share one greedy generation
    probe_cfg, max_new = probes.ProbeConfig(), EvalConfig().max_new_tokens
    for name in names:
        if name not in PROBE_WORK:
            meta = probes.PROBES.get(name).meta
            est.notes.append(f"probe {name!r}: " + (meta.get("work") or ("no language model work" if not
                                                    meta.get("needs_model", True) else "not estimated")))
            continue
        passes, reads, flops, kind = PROBE_WORK[name]
        passes = getattr(probe_cfg, passes) if isinstance(passes, str) else passes
        if reads == "example":
            tokens = sum(min(max_length, lm.tokens(ex.text)) for ex in examples)
        else:
            tokens = sum(lm.prompt_tokens(ex) + max_new for ex in examples)
        est.add(f"probe {name}: {passes} pass(es) over {len(examples)} pool examples (probe caches not consulted)",
                passes * tokens, lm.params, flops, kind)


def _header(lm: Model | None) -> list[str]:
    if lm is None:
        return []
    return [f"  model {lm.name} ({_millions(lm.params)} parameters)" + (f": {lm.note}" if lm.note else "")]


def _millions(n: int) -> str:
    return f"{n / 1e6:.0f}M" if n >= 1e7 else f"{n / 1e6:.2g}M"


def _total(est: Estimate, tail: str) -> str:
    return f"  estimated total: ~{est.seconds / 60:.1f} min on this machine (rough{tail})"


# ---------------------------------------------------------------------------- the commands
def plan_experiment(cfg: ExperimentConfig) -> str:
    data = load_data(cfg.data, seed=cfg.seeds[0])
    specs = [(spec, *parse_strategy(spec)) for spec in cfg.strategies]
    runs = cells(cfg, specs)
    est = Estimate(models.pick_device(cfg.model.device))
    lm = causal_lm(cfg.model.name)
    needs = needed_features([(n, p) for _, n, p in specs], cfg.orderings)
    add_scoring(est, data.pool.examples, needs, cfg.model, lm)
    mean_len = float(np.mean([lm.tokens(ex.text) for ex in data.pool.examples[:200]])) + TEMPLATE_TOKENS
    rounds = cfg.loop.rounds
    # a loop trains (and evaluates) once per round on everything labelled so far, and rescores the
    # rest of the pool under each round's adapter for strategies that read the model
    sizes = {c.budget: ([cfg.loop.seed_size + r * cfg.loop.round_size(c.budget) for r in range(rounds + 1)]
                        if rounds else [c.budget]) for c in runs}
    examples = sum(sum(sizes[c.budget]) for c in runs)
    evaluations = sum(len(sizes[c.budget]) for c in runs) + 1
    packing = _packing(cfg, lm, data.pool.examples, est.device)
    train_tokens = int(examples * cfg.train.epochs * mean_len)
    if packing:
        train_tokens = int(train_tokens - examples * cfg.train.epochs * packing[1] * (1 - 1 / cfg.train.batch_size))
    est.add(f"train {len(runs)} runs{f' x {rounds + 1} rounds' if rounds else ''}, {examples} examples in all x "
            f"{cfg.train.epochs} epoch(s){', the shared prefix once a step' if packing else ''}", train_tokens,
            lm.params, 6, "train")
    if rounds:
        from llm_al.types import MODEL_FEATURES
        from llm_al.strategies.needs import strategy_needs

        rescored = sum(len(data.pool) - n for c in runs if strategy_needs(c.name, c.params) & MODEL_FEATURES
                       for n in sizes[c.budget][:-1])
        if rescored:
            est.add(f"rescore {rescored} pool examples in all under the rounds' adapters", int(rescored * mean_len),
                    lm.params, 2, "score")
    prompt_len = float(np.mean([lm.tokens(ex.text) for ex in data.test.examples]))
    est.add(f"generate for {len(data.test)} test examples x {evaluations} evaluations (<= {cfg.eval.max_new_tokens} "
            "new tokens each)", int(evaluations * len(data.test) * (prompt_len + cfg.eval.max_new_tokens)),
            lm.params, 2, "generate")
    by_cell: dict[tuple[str, str], int] = {}
    for c in runs:
        by_cell[(c.strategy, c.ordering)] = by_cell.get((c.strategy, c.ordering), 0) + 1
    lines = [f"plan for {cfg.name!r} -> {cfg.out_dir} (dry run: nothing is trained or written)",
             f"  pool {len(data.pool)} examples, test {len(data.test)}, budget {'/'.join(map(str, cfg.budget_list))}, design {cfg.design}",
             *_header(lm),
             f"  features to compute: {', '.join(sorted(needs)) or 'none'}",
             f"  runs: {len(runs)} + the untrained floor"]
    lines += [f"    {s} [{o}]: {n}" for (s, o), n in by_cell.items()]
    lines.append(f"  packing: {packing[0]} runs a pass (run.pack_size={cfg.run.pack_size}); the {packing[1]}-token "
                 "prompt prefix every example shares runs once per training step" if packing else
                 "  packing: none (each run alone" + (": an AL loop's rounds depend on each other)" if rounds else ")"))
    lines += est.lines()
    lines.append(_total(est, f"; finished runs in {cfg.out_dir} are skipped when it runs"))
    return "\n".join(lines)


def _packing(cfg: ExperimentConfig, lm: Model, examples, device: str) -> tuple[int | str, int] | None:
    """(runs per pack, shared prefix tokens) of a packed sweep (llm_al/run/packed.py), or None for
    runs alone (run.pack_size=alone, or an AL loop). "auto" on a GPU is decided at run time."""
    if cfg.loop.rounds or cfg.run.pack_size == "alone":
        return None
    K = cfg.run.pack_size
    if K == "auto":
        from llm_al.run.packed import CPU_PACK

        K = CPU_PACK if device == "cpu" else "as many as half the free GPU memory holds (auto)"
    prefix = 0
    if lm.tokenizer is not None and examples:
        from llm_al.features.formatting import shared_prefix_length, tokenize

        prefix = shared_prefix_length(tokenize(lm.tokenizer, list(examples[:64]), cfg.model.max_length))
    return K, prefix


def plan_select(pool, spec: str, needs: set[str], model_cfg: ModelConfig, budget: int, out: str, output_format: str) -> str:
    """`llm-al select --dry-run`: what scoring the pool for `spec` would cost. The caller has
    checked the strategy, its parameters and the budget."""
    est = Estimate(models.pick_device(model_cfg.device))
    lm = causal_lm(model_cfg.name) if _needs_lm(needs, model_cfg) else None
    add_scoring(est, pool.examples, needs, model_cfg, lm)
    lines = ["plan for llm-al select (dry run: no model is loaded, nothing is written)",
             f"  pool {pool.path}: {len(pool)} examples" + (f" ({len(pool.duplicates)} exact duplicates dropped)"
                                                             if pool.duplicates else ""),
             f"  strategy {spec}: budget {budget} of {len(pool)}",
             f"  features to compute: {', '.join(sorted(needs)) or 'none'}",
             *_header(lm),
             f"  output {out} ({output_format}): not written",
             *est.lines(), _total(est, "")]
    return "\n".join(lines)


def plan_annotate_export(pool, candidates, spec: str, needs: set[str], model_cfg: ModelConfig, budget: int, out: str,
                         drafts: bool, max_new_tokens: int) -> str:
    """`llm-al annotate export --dry-run`: choosing `budget` of the unlabelled `candidates`, and
    drafting their responses with the model when `drafts`."""
    est = Estimate(models.pick_device(model_cfg.device))
    lm = causal_lm(model_cfg.name) if drafts or _needs_lm(needs, model_cfg) else None
    add_scoring(est, candidates.examples, needs, model_cfg, lm)
    if drafts:
        lengths = [lm.prompt_tokens(ex) for ex in candidates.examples]
        est.add(f"draft responses for {budget} chosen prompts (<= {max_new_tokens} new tokens each)",
                int(budget * (float(np.mean(lengths)) + max_new_tokens)), lm.params, 2, "generate")
    lines = ["plan for llm-al annotate export (dry run: no model is loaded, nothing is written)",
             f"  pool {pool.path}: {len(pool)} examples, {len(candidates)} without a response",
             f"  strategy {spec}: budget {budget} of {len(candidates)}",
             f"  features to compute: {', '.join(sorted(needs)) or 'none'}",
             *_header(lm),
             f"  output {out} (+ {Path(out).name}.ids.json): not written",
             *est.lines(), _total(est, "")]
    return "\n".join(lines)


def _needs_lm(needs: set[str], model_cfg: ModelConfig) -> bool:
    embed_model = "embeddings" in needs and model_cfg.embedder == models.MODEL_EMBEDDER
    return (bool(needs & (LOSS_FEATURES | DIRECT_FEATURES)) or embed_model
            or probes.needs_model(needs & set(probes.provided_names())))


# ---------------------------------------------------------------------------- overlap and synthesis
INDEX_WORDS_PER_SECOND = 1.0e6
"""n-gram index build rate assumed by `overlap --dry-run`: the slowest build of the 2-core CPU's
benchmark (eval/results/bench_overlap.txt: 1.0-3.4M words/s)."""
BYTES_PER_WORD = 6                  # plain text; compressed formats hold ~3x more words per byte


def _reference_size(spec: str) -> tuple[int | None, str]:
    """(bytes on disk, what they are) of a reference, or (None, why) when it cannot be told
    without reading it (a hub dataset)."""
    if spec == "pydoc":
        from pydoc_data import topics

        return Path(topics.__file__).stat().st_size, "the standard library's pydoc_data.topics"
    if is_hub_id(spec):
        return None, "a hub dataset (its size is known only by reading it)"
    files = [f for _, p in reference_units(spec) for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    packed = sum(f.stat().st_size for f in files if f.suffix in (".gz", ".parquet", ".arrow"))
    plain = sum(f.stat().st_size for f in files) - packed
    return plain + 3 * packed, f"{len(files)} file(s), {(plain + packed) / 1e6:.1f} MB"


def plan_overlap(pool, test, reference: str, n: int, field: str, split: str, similarity: bool, embedder: str,
                 sample_passages: int, passage_words: int, embedder_named: bool = True) -> str:
    """`llm-al overlap --dry-run`: whether the reference index is cached or how long building it
    should take, and what the embedding similarity would embed. Reads no corpus text, no weights.
    As the real command does, a default embedder (not `embedder_named`) that cannot load means the
    similarity would be skipped, not an error."""
    folder = reference_index_dir(reference, n, field, split)
    lines = ["plan for llm-al overlap (dry run: nothing is indexed, embedded or written)",
             f"  pool {pool.path}: {len(pool)} examples" + (f"; test set: {len(test)} examples" if test else "")]
    if (folder / "meta.json").exists():
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        lines.append(f"  reference {reference}: its {n}-gram index is cached ({meta.get('tokens', 0):,} words, "
                     f"{folder}): reused, seconds")
    else:
        size, what = _reference_size(reference)
        if size is None:
            lines.append(f"  reference {reference}: {what}; indexed streamed at ~{INDEX_WORDS_PER_SECOND / 1e6:.0f}M "
                         "words/s on a 2-core CPU, then cached")
        else:
            words = size / BYTES_PER_WORD
            lines.append(f"  reference {reference} ({what}): ~{words / 1e6:.1f}M words to index streamed into "
                         f"{folder}, ~{max(1, words / INDEX_WORDS_PER_SECOND):.0f} s at "
                         f"{INDEX_WORDS_PER_SECOND / 1e6:.0f}M words/s; later runs reuse it")
    if similarity:
        est = Estimate(models.pick_device("auto"))
        try:
            model = _embedder(embedder)
        except UserError as err:
            if embedder_named:
                raise
            lines.append(f"  embedding similarity: would be skipped, the default embedder is unavailable ({err})")
            return "\n".join(lines)
        _embedding_pass(est, pool.examples, model, models.cache_root() / "features")
        from llm_al.config import OverlapConfig
        from llm_al.strategies.reference_overlap import sample_path

        cfg = OverlapConfig(reference=reference, reference_field=field, reference_split=split, n=n,
                            sample_passages=sample_passages, passage_words=passage_words)
        if sample_path(cfg, model.key).exists():
            est.notes.append("the reference passages' embeddings are cached")
        else:
            est.add(f"embed up to {sample_passages} reference passages of {passage_words} words (then cached)",
                    int(sample_passages * passage_words * 1.3), model.params, 2, "score")
        lines += est.lines() + [_total(est, "; --no-similarity skips the embedding")]
    else:
        lines.append("  embedding similarity: skipped (--no-similarity)")
    return "\n".join(lines)


def plan_synthesize(pool, spec: str, needs: set[str], model_cfg: ModelConfig, n: int, seeds_per_prompt: int, max_rounds: int,
                    max_new_tokens: int) -> str:
    """`llm-al annotate synthesize --dry-run`: ranking the pool prompts by `spec`, then rounds of
    few-shot generation (the first writes n prompts; later rounds only replace what de-duplication
    dropped, so the total lies between one round and `max_rounds`)."""
    est = Estimate(models.pick_device(model_cfg.device))
    lm = causal_lm(model_cfg.name)
    add_scoring(est, pool.examples, needs, model_cfg, lm)
    k = min(seeds_per_prompt, len(pool))
    texts = [" ".join(m["content"] for m in ex.prompt_messages if m["role"] == "user") for ex in pool.examples[:200]]
    shots = [texts[(g * k + j) % len(texts)] for g in range(min(n, 50)) for j in range(k)]
    per_prompt = float(np.mean([lm.prompt_tokens(_Messages(few_shot_messages(shots[g * k:(g + 1) * k])))
                                for g in range(len(shots) // k)]))
    est.add(f"write {n} prompts from {k} examples each (<= {max_new_tokens} new tokens; up to {max_rounds} rounds "
            "if de-duplication drops some: this is one round)", int(n * (per_prompt + max_new_tokens)),
            lm.params, 2, "generate")
    lines = ["plan for llm-al annotate synthesize (dry run: no model is loaded, nothing is written)",
             f"  pool {pool.path}: {len(pool)} prompts; ranked by {spec}",
             f"  features to compute: {', '.join(sorted(needs)) or 'none'}", *_header(lm), *est.lines(),
             _total(est, f"; x{max_rounds} at most if most new prompts are duplicates")]
    return "\n".join(lines)


@dataclass
class _Messages:
    """A stand-in example for Model.prompt_tokens: a few-shot prompt's messages."""

    prompt_messages: list
