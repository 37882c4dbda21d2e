"""The `llm-al` command line.

    llm-al demo [key=value ...]                 the main job: strategies vs random on the embedded default
    llm-al run RECIPE.yaml [key=value ...]      any experiment described by a recipe
    llm-al run RECIPE.yaml --ray --workers N    its runs spread over Ray workers (llm_al/run/distributed.py)
    llm-al select POOL --strategy S --budget N --out FILE [--labelled FILE] [--dry-run]
    llm-al overlap POOL [--reference R] [--test T] [--dry-run]   overlap with a reference corpus and a test set
    llm-al annotate export|import ...          humans in the loop: prompts out, filled responses back in
    llm-al annotate synthesize POOL --out F --n N   new prompts written near the least-sure pool prompts
    llm-al report RESULTS_DIR                   Markdown + HTML report with plots and statistics
    llm-al eval-harness RUN_DIR --tasks T1,T2   lm-eval scores of a run's adapter, added to its result
    llm-al list                                 strategies, orderings and metrics
    llm-al doctor                               what the environment has and lacks

User errors print one line (`llm-al: error: ...`) and exit with status 2, without a traceback.

Over 450 lines because it holds the argparse tables (_parser) and one short handler per command;
the work itself is in llm_al.api and the layers below.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from llm_al.errors import UserError

if TYPE_CHECKING:
    from llm_al.config import ExperimentConfig

log = logging.getLogger("llm_al")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the same one line and exit status 2 as every other error."""

    def error(self, message: str):
        self.exit(2, f"llm-al: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _count(minimum: int):
    """An argparse type: an integer >= minimum, said in one line otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


POSITIVE, NON_NEGATIVE = _count(1), _count(0)


def _parser() -> argparse.ArgumentParser:
    from llm_al.config import EvalConfig

    p = _Parser(prog="llm-al", description="Choose the few examples worth fine-tuning an LLM on, "
                                "and measure whether the choice beat random.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the demo: random vs perplexity vs k-center on the embedded default")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. budget=50")
    demo.add_argument("--dry-run", action="store_true", help="print the plan and its estimated cost, run nothing")

    run = sub.add_parser("run", help="run an experiment recipe (YAML) with optional key=value overrides")
    run.add_argument("recipe")
    run.add_argument("overrides", nargs="*", metavar="key=value")
    run.add_argument("--dry-run", action="store_true", help="print the plan and its estimated cost, run nothing")
    run.add_argument("--ray", action="store_true",
                     help="score the pool and spread the runs over Ray workers (pip install 'llm-al[ray]')")
    run.add_argument("--workers", type=POSITIVE, default=None, help="with --ray: workers (default: one per GPU)")
    run.add_argument("--ray-address", default=None,
                     help="with --ray: a running cluster, e.g. HEAD_IP:6379 (default: $RAY_ADDRESS, else a local one)")

    sel = sub.add_parser("select", help="select a subset of a pool and write it in the pool's format")
    sel.add_argument("pool", help="JSONL/JSON/CSV/Parquet file, saved `datasets` folder or hub dataset id")
    sel.add_argument("--strategy", default="random", help="strategy spec, e.g. kcenter or perplexity:band=middle")
    sel.add_argument("--budget", type=POSITIVE, required=True)
    sel.add_argument("--out", required=True, help="output file; its extension sets the format (default: the pool's); "
                     "a name ending in / is a datasets folder")
    sel.add_argument("--export-shape", default="input", choices=["input", "alpaca", "messages"],
                     help="records as read (default), Alpaca {instruction, input, output}, or chat {messages}")
    sel.add_argument("--labelled", default=None, metavar="FILE",
                     help="examples already chosen (any format select reads, e.g. an earlier --out): never picked "
                          "again, and strategies that use a labelled set pick away from them (llm-al list)")
    sel.add_argument("--targets", default=None, metavar="FILE",
                     help="rds: examples of the data to do well on (any pool format; default: an embedded task's dev split)")
    sel.add_argument("--order", default=None, metavar="ORDERING",
                     help="write the picks in this training order (llm-al list: easy_to_hard, shuffled, ...; "
                          "default: pick order), for trainers that keep the file's order (README: hand-off)")
    sel.add_argument("--explain", action="store_true",
                     help="add why each example was picked: its k-means cluster and nearest earlier pick (embeddings)")
    sel.add_argument("--seed", type=NON_NEGATIVE, default=0)
    sel.add_argument("--model", default=None, help="causal LM for loss-based strategies (default: embedded SmolLM2)")
    sel.add_argument("--embedder", default=None, help="sentence-transformers model (default: embedded MiniLM)")
    sel.add_argument("--scorer", default=None, help="small causal LM for superfiltering (scorer IFD)")
    sel.add_argument("--field", action="append", default=[], metavar="ROLE=COLUMN",
                     help="map a column to a role (prompt, response, system, input, instruction, messages, "
                          "source, target, source_lang, target_lang); repeatable")
    sel.add_argument("--system-prompt", default=None)
    _language_options(sel)
    sel.add_argument("--split", default="train", help="split of a datasets folder / hub dataset")
    sel.add_argument("--device", default="auto")
    sel.add_argument("--max-length", type=POSITIVE, default=512, help="tokens per example for loss scoring")
    sel.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model (off by default)")
    sel.add_argument("--dry-run", action="store_true",
                     help="print what would be scored and its estimated time; load no model, write nothing")

    ov = sub.add_parser("overlap", help="overlap of a pool (or a selection) with a reference corpus and a test set")
    ov.add_argument("pool", help="pool or selection file (any format `select` reads)")
    ov.add_argument("--reference", default="pydoc",
                    help="reference corpus, streamed: 'pydoc' (built in), a text file (.txt/.md), .jsonl/.json (JSON "
                         "Lines), any of those as .gz, .parquet, a datasets save_to_disk folder, a folder of such "
                         "shards, or a hub dataset id (online)")
    ov.add_argument("--reference-field", default="text",
                    help="the text field/column of a .jsonl/.parquet/datasets/hub reference (default: text)")
    ov.add_argument("--reference-split", default="train",
                    help="the split of a DatasetDict folder or hub dataset reference (default: train)")
    ov.add_argument("--test", default=None, help="a test set to measure overlap with (any pool format)")
    ov.add_argument("--n", type=POSITIVE, default=8, help="word n-gram length")
    ov.add_argument("--out", default=None, help="write per-example overlap columns beside the records (pool format; "
                    "a name ending in / is a datasets folder)")
    ov.add_argument("--field", action="append", default=[], metavar="ROLE=COLUMN")
    _language_options(ov)
    ov.add_argument("--embedder", default=None,
                    help="sentence-transformers model for ref_similarity (default: embedded MiniLM)")
    ov.add_argument("--no-similarity", action="store_true",
                    help="skip the embedding similarity to the reference (ref_similarity)")
    ov.add_argument("--sample-passages", type=POSITIVE, default=2000, help="ref_similarity: reference passages sampled")
    ov.add_argument("--passage-words", type=POSITIVE, default=64, help="ref_similarity: words per reference passage")
    ov.add_argument("--dry-run", action="store_true",
                    help="say whether the reference index is cached or what building it costs; index, embed, write nothing")

    ann = sub.add_parser("annotate", help="humans in the loop: export prompts for annotation, import the filled file")
    ann_sub = ann.add_subparsers(dest="annotate_command", required=True, metavar="STEP")
    exp = ann_sub.add_parser("export", help="choose unlabelled prompts and write them for annotators (JSONL or CSV)")
    exp.add_argument("pool", help="a pool whose examples may lack responses")
    exp.add_argument("--strategy", default="random", help="a label-free strategy: random or an embedding-based one")
    exp.add_argument("--budget", type=POSITIVE, required=True)
    exp.add_argument("--out", required=True, help="the file for annotators (.jsonl or .csv)")
    exp.add_argument("--seed", type=NON_NEGATIVE, default=0)
    exp.add_argument("--drafts", action="store_true", help="pre-fill draft responses with the model (--model)")
    exp.add_argument("--model", default=None, help="causal LM for drafts and model-based strategies (default: embedded SmolLM2)")
    exp.add_argument("--max-new-tokens", type=POSITIVE, default=EvalConfig.max_new_tokens,
                     help=f"longest draft in tokens (default: eval.max_new_tokens, {EvalConfig.max_new_tokens})")
    exp.add_argument("--field", action="append", default=[], metavar="ROLE=COLUMN")
    _language_options(exp)
    exp.add_argument("--dry-run", action="store_true",
                     help="print what would be scored or drafted and its estimated time; load no model, write nothing")
    syn = ann_sub.add_parser("synthesize", help="write new prompts near the ones the model is least sure about "
                             "(an unlabelled pool file for export)")
    syn.add_argument("pool", help="a pool (responses optional); its prompts seed the few-shot prompts")
    syn.add_argument("--out", required=True, help="the new unlabelled pool file (.jsonl)")
    syn.add_argument("--n", type=POSITIVE, required=True, help="new prompts to keep")
    syn.add_argument("--from-strategy", default="greedy_logprob",
                     help="label-free strategy ranking the pool prompts to imitate (default: greedy_logprob, least sure first)")
    syn.add_argument("--seeds-per-prompt", type=POSITIVE, default=3, help="pool prompts shown in each few-shot prompt")
    syn.add_argument("--seed", type=NON_NEGATIVE, default=0)
    syn.add_argument("--model", default=None, help="causal LM that ranks and writes (default: embedded SmolLM2)")
    syn.add_argument("--temperature", type=float, default=1.0)
    syn.add_argument("--max-new-tokens", type=POSITIVE, default=EvalConfig.max_new_tokens)
    syn.add_argument("--threshold", type=float, default=0.8,
                     help="character 3-gram Jaccard at or above which a new prompt counts as a near-duplicate")
    syn.add_argument("--max-rounds", type=POSITIVE, default=5, help="generation rounds at most, until --n are kept")
    syn.add_argument("--field", action="append", default=[], metavar="ROLE=COLUMN")
    syn.add_argument("--dry-run", action="store_true",
                     help="print what ranking and writing would cost; load no model, write nothing")
    imp = ann_sub.add_parser("import", help="validate a filled annotation file and write the pool with its responses")
    imp.add_argument("filled", help="the annotation file, filled in")
    imp.add_argument("--pool", required=True, help="the pool the prompts were exported from")
    imp.add_argument("--out", required=True, help="where to write the labelled examples (the pool's labelled rows and "
                     "the new ones; a name ending in / is a datasets folder)")
    imp.add_argument("--partial", action="store_true", help="accept a file that answers only some exported prompts: "
                     "blank responses and unedited drafts stay unlabelled")
    imp.add_argument("--accept-drafts", action="store_true",
                     help="take responses still equal to the model's draft as labels (refused by default)")
    imp.add_argument("--keep-unlabelled", action="store_true",
                     help="write the whole merged pool, unlabelled rows included (default: labelled rows only, "
                          "ready for select)")
    imp.add_argument("--field", action="append", default=[], metavar="ROLE=COLUMN")

    rep = sub.add_parser("report", help="write a Markdown + self-contained HTML report (plots, statistics) of a results dir")
    rep.add_argument("results_dir")
    rep.add_argument("--out", default=None, help="output folder (default: RESULTS_DIR/report)")

    har = sub.add_parser("eval-harness", help="lm-evaluation-harness on the base model + a run's adapter; the "
                         "scores join the run's result (needs: pip install 'llm-al[harness]')")
    har.add_argument("run_dir", metavar="RUN_DIR", help="RESULTS_DIR/adapters/RUN_ID or RESULTS_DIR/runs/RUN_ID.json")
    har.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    har.add_argument("--limit", type=POSITIVE, default=None, help="at most N examples per task")
    har.add_argument("--include-path", action="append", default=[], metavar="DIR", help="a folder of task YAML files")
    har.add_argument("--batch-size", default="8", help="an integer, 'auto' or 'auto:N' (default 8)")
    har.add_argument("--device", default=None, help="default: the run's model.device")

    lb = sub.add_parser("leaderboard", help="every strategy vs random across results folders (one task each), "
                        "Holm-adjusted as one family, with each strategy's cost")
    lb.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR")
    lb.add_argument("--out", default=None, help="also write the Markdown table here")

    sub.add_parser("list", help="list strategies, orderings and metrics")
    sub.add_parser("tasks", help="list the embedded tasks (pick one with task=NAME), with their pool and test sizes")
    sub.add_parser("doctor", help="report the environment (torch, GPU, embedded assets, cache, offline state)")
    return p


def _language_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source-lang", default=None,
                        help="translation pairs: the source language where the records name none (e.g. English)")
    parser.add_argument("--target-lang", default=None,
                        help="translation pairs: the target language where the records name none (e.g. fr, French)")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("transformers", "sentence_transformers", "datasets", "httpx", "urllib3", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # peft asks transformers a deprecated question on every adapter attach; not the user's concern
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def cmd_list() -> None:
    from llm_al.metrics import METRICS
    from llm_al.orderings import ORDERINGS
    from llm_al.registries import labelled_use
    from llm_al.strategies.base import STRATEGIES

    for title, reg in (("strategies", STRATEGIES), ("orderings", ORDERINGS), ("metrics", METRICS)):
        print(f"{title}:")
        width = max(len(e.name) for e in reg)
        for e in reg:
            needs = e.meta.get("needs")
            tags = ([f"needs: {', '.join(needs)}"] if needs else []) + (
                [f"labelled set: {labelled_use(e.meta)}"] if reg is STRATEGIES else [])
            suffix = f"  [{'; '.join(tags)}]" if tags else ""
            print(f"  {e.name.ljust(width)}  {e.description}{suffix}")
        print()


def cmd_experiment(recipe: str | None, overrides: list[str], dry_run: bool = False) -> None:
    from llm_al import api
    from llm_al.analysis.table import format_table
    from llm_al.config import load_config

    cfg = load_config(recipe, overrides)
    _check_run_dir(cfg, recipe, dry_run)
    if dry_run:
        from llm_al.run.estimate import plan_experiment

        print(plan_experiment(cfg))
        return
    summary = api.run(cfg)
    print(format_table(summary))
    print(f"\nResults: {cfg.out_dir}/ (summary.json, table.md, runs/*.json); "
          f"total {summary['total_seconds']:.0f} s")


def cmd_ray(args: argparse.Namespace) -> None:
    """`llm-al run RECIPE --ray [--workers N]`: the experiment's runs spread over Ray workers."""
    from llm_al.config import load_config
    from llm_al.run.distributed import default_workers, run_sweep_ray
    from llm_al.analysis.table import format_table

    if not args.ray:
        raise UserError("--workers and --ray-address go with --ray (e.g. llm-al run recipe.yaml --ray --workers 4)")
    cfg = load_config(args.recipe, args.overrides)
    _check_run_dir(cfg, args.recipe, False)
    workers = args.workers if args.workers is not None else default_workers(args.ray_address)
    summary = run_sweep_ray(cfg, workers, address=args.ray_address)
    print(format_table(summary))
    print(f"\nResults: {cfg.out_dir}/ (summary.json, table.md, runs/*.json); total {summary['ray_seconds']:.0f} s "
          f"over {workers} Ray workers")
    for w in summary["workers"]:
        print(f"  {w['worker']}{' (final summary)' if w.get('final') else ''}: {len(w['ran'])} runs, {w['seconds']:.0f} s")


def _check_run_dir(cfg: ExperimentConfig, recipe: str | None, dry_run: bool) -> None:
    """out_dir must be a folder that can be written and none of the run's input files."""
    from llm_al.io import check_output

    check_output(cfg.out_dir, [cfg.data.pool, cfg.data.test, recipe], folder=True, label="out_dir",
                 probe=not dry_run)


def _check_subset_out(out: str, inputs: list, pool_format: str, dry_run: bool) -> str:
    """The format `out` will be written in (export.output_format), after the one output check:
    not an input, not a folder where a file is meant (or the reverse), writable."""
    from llm_al.data.export import output_format
    from llm_al.io import check_output

    fmt = output_format(out, None, pool_format)
    check_output(out, inputs, folder=fmt == "datasets", replaces_folder=fmt == "datasets", probe=not dry_run)
    return fmt


def _fields(items: list[str]) -> dict | None:
    fields = {}
    for item in items:
        role, eq, column = item.partition("=")
        if not eq:
            raise UserError(f"--field {item!r} is not ROLE=COLUMN (e.g. --field prompt=question)")
        fields[role] = column
    return fields or None


def cmd_overlap(args: argparse.Namespace) -> None:
    from llm_al.data.pool import load_pool
    from llm_al.data.export import write_subset
    from llm_al.config import DataConfig
    from llm_al.data.tasks import is_task
    from llm_al.features.overlap_stats import example_overlap
    from llm_al.run.pipeline import load_data
    from llm_al.features.reference_index import reference_index, reference_index_dir, selection_overlap

    languages = (args.source_lang, args.target_lang)
    if is_task(args.pool):                  # an embedded task, with its fixed test set unless one is given
        data = load_data(DataConfig(pool=args.pool), need_test=True)
        pool, test = data.pool, data.test
    else:
        pool, test = load_pool(args.pool, fields=_fields(args.field), languages=languages), None
    if args.test:
        test = load_pool(args.test, fields=_fields(args.field), languages=languages)
    if args.out:
        _check_subset_out(args.out, [args.pool, args.test, args.reference], pool.format, args.dry_run)
    if args.dry_run:
        from llm_al.config import ModelConfig
        from llm_al.run.estimate import plan_overlap

        print(plan_overlap(pool, test, args.reference, args.n, args.reference_field, args.reference_split,
                           not args.no_similarity, args.embedder or ModelConfig().embedder, args.sample_passages,
                           args.passage_words, embedder_named=bool(args.embedder)))
        return
    ref = (args.reference, args.n, args.reference_field, args.reference_split)
    folder = reference_index_dir(*ref)
    cached = (folder / "meta.json").exists()
    if not cached:
        print(f"indexing the reference {args.reference} ({args.n}-grams, streamed; later runs reuse the index in "
              f"{folder}) ...", flush=True)
    index = reference_index(*ref)
    report = selection_overlap(index, pool.examples, test.examples if test else None, args.n)
    meta = index.meta
    how = "index reused" if cached else f"index built in {meta['build_seconds']:.1f} s"
    print(f"reference {args.reference}: {meta['documents']:,} documents, {meta['tokens']:,} words, "
          f"{meta['ngrams']:,} distinct {args.n}-grams ({how})")
    for label, part in ((args.pool, pool), (f"test set {args.test or '(embedded)'}", test)):
        if part is not None:
            dropped = f" ({len(part.duplicates)} exact duplicates dropped)" if part.duplicates else ""
            print(f"{label}: {len(part)} examples{dropped}")
    for group, values in report.items():
        print(f"  overlap with the {group}:")
        for key, value in values.items():
            print(f"    {key:22s} {value:.4f}" if isinstance(value, float) else f"    {key:22s} {value}")
        if group == "reference" and values["n_short"]:
            print(f"    ({values['n_short']} examples have fewer than {args.n} words, so no {args.n}-grams: they count "
                  f"as 0 in ngram_overlap and longest_match, not in pooled_ngram_overlap; try a smaller --n)")
    similarity = None if args.no_similarity else _reference_similarity(args, pool)
    if args.out:
        per = example_overlap(index, [ex.text for ex in pool.examples])
        columns = {"llm_al_id": pool.ids, **{f"llm_al_{k}": [round(float(v), 6) for v in per[k]]
                                              for k in ("ngram_overlap", "longest_match", "vocab_seen")}}
        if similarity is not None:
            columns["llm_al_ref_similarity"] = [round(float(v), 6) for v in similarity]
        path = write_subset(pool, list(range(len(pool))), args.out, columns=columns)
        print(f"per-example overlap -> {path}")


def _reference_similarity(args: argparse.Namespace, pool):
    """Print the mean and median ref_similarity of the pool; return the (N,) scores. With the
    default embedder unavailable (its wheel missing), say so and return None; an embedder named
    with --embedder must load."""
    import numpy as np

    from llm_al.config import ModelConfig, OverlapConfig
    from llm_al.strategies.reference_overlap import similarity_scores

    from llm_al import models

    embedder = args.embedder or ModelConfig().embedder
    cfg = OverlapConfig(reference=args.reference, reference_field=args.reference_field,
                        reference_split=args.reference_split, n=args.n, sample_passages=args.sample_passages,
                        passage_words=args.passage_words)
    try:
        loaded = models.load_embedder(embedder)
    except UserError as err:
        if args.embedder:
            raise
        print(f"  embedding similarity to the reference: skipped, the default embedder is unavailable ({err})")
        return None
    print(f"  embedding similarity: embedding the pool and (first run only, then cached) up to "
          f"{cfg.sample_passages} reference passages; minutes on a CPU, --no-similarity skips it ...", flush=True)
    scores, cost = similarity_scores([ex.text for ex in pool.examples], cfg, embedder, embedder=loaded)
    print(f"  embedding similarity to the reference (ref_similarity: mean cosine to the {cost['neighbours']} "
          f"nearest of {cost['passages']} sampled passages, {embedder}):")
    print(f"    {'mean':22s} {float(np.mean(scores)):.4f}")
    print(f"    {'median':22s} {float(np.median(scores)):.4f}")
    return scores


def cmd_annotate_synthesize(args: argparse.Namespace) -> None:
    """New prompts near the least-sure pool prompts (llm_al/run/synthesize.py), or their --dry-run estimate."""
    from llm_al.run.synthesize import prepare_synthesis, run_synthesis

    if args.dry_run:
        from llm_al.run.estimate import plan_synthesize

        pool, _, _, needs, model_cfg = prepare_synthesis(args.pool, args.out, args.from_strategy,
                                                         _fields(args.field), args.model,
                                                         (args.n, args.seeds_per_prompt, args.max_rounds),
                                                         dry_run=True)
        print(plan_synthesize(pool, args.from_strategy, needs, model_cfg, args.n, args.seeds_per_prompt,
                              args.max_rounds, args.max_new_tokens))
        return
    report = run_synthesis(args.pool, args.out, args.n, strategy=args.from_strategy,
                           seeds_per_prompt=args.seeds_per_prompt, seed=args.seed, model_name=args.model,
                           fields=_fields(args.field), temperature=args.temperature,
                           max_new_tokens=args.max_new_tokens, threshold=args.threshold,
                           max_rounds=args.max_rounds)
    print(report.summary())
    print(f"{report.kept} new prompts -> {report.path}")
    print(f"then: llm-al annotate export {report.path} --budget {report.kept} --out TO_ANNOTATE.csv")


def cmd_annotate(args: argparse.Namespace) -> None:
    """Export: pick among the unlabelled prompts, optionally draft responses. Import: see
    cmd_annotate_import. Synthesize: new prompts near the least-sure pool prompts."""
    from llm_al.config import ModelConfig, parse_strategy
    from llm_al.data.annotate import annotation_format, export_for_annotation, unlabelled_indices
    from llm_al.data.pool import load_pool
    from llm_al.io import check_output, write_text
    from llm_al.run.pipeline import compute_features
    from llm_al.strategies.needs import needed_features
    from llm_al.seeds import rng
    from llm_al.strategies.base import STRATEGIES, check_budget, run_strategy
    from llm_al.types import DIRECT_FEATURES, LOSS_FEATURES

    if args.annotate_command == "synthesize":
        cmd_annotate_synthesize(args)
        return
    if args.annotate_command == "import":
        cmd_annotate_import(args)
        return
    name, params = parse_strategy(args.strategy)
    STRATEGIES.check(name, params)
    needs = needed_features([(name, params)], [])
    if needs & (LOSS_FEATURES | DIRECT_FEATURES | {"scorer_ifd"}):
        raise UserError(f"strategy {name!r} reads reference responses ({', '.join(sorted(needs))}), which unlabelled "
                        "prompts do not have; use random or an embedding-based strategy (kcenter, kmeans, "
                        "facility_location, idds)")
    annotation_format(Path(args.out), args.out)
    check_output(args.out, [args.pool], probe=not args.dry_run)
    check_output(str(args.out) + ".ids.json", [args.pool], label="the export's id list", probe=not args.dry_run)
    pool = load_pool(args.pool, fields=_fields(args.field), labelled=False,
                     languages=(args.source_lang, args.target_lang))
    if pool.duplicates:
        print(f"{pool.path}: {pool.duplicates_note()}")
    todo = unlabelled_indices(pool)
    if not todo:
        raise UserError(f"{args.pool}: every example already has a response; nothing to annotate")
    candidates = pool.subset(todo)
    model_cfg = ModelConfig()
    if args.model:                      # model-based label-free strategies (greedy_logprob) score with it too
        model_cfg.name = args.model
    check_budget(args.budget, len(candidates))       # the parameters were checked above
    if args.dry_run:
        from llm_al.run.estimate import plan_annotate_export

        print(plan_annotate_export(pool, candidates, args.strategy, needs, model_cfg, args.budget, args.out,
                                   args.drafts, args.max_new_tokens))
        return
    features = compute_features(candidates, needs, model_cfg)
    sel = run_strategy(name, features, args.budget, rng(args.seed, "subset"), **params)
    chosen = [todo[i] for i in sel.indices]
    drafts = None
    if args.drafts:
        from llm_al import models
        from llm_al.evaluate import generate
        from llm_al.features.formatting import prompt_text

        model, tokenizer = models.load_model(args.model or model_cfg.name)
        drafts = generate(model, tokenizer, [prompt_text(tokenizer, pool.examples[i].prompt_messages) for i in chosen],
                          max_new_tokens=args.max_new_tokens, batch_size=16)
    path = export_for_annotation(pool, chosen, args.out, drafts=drafts)
    write_text(str(path) + ".ids.json", json.dumps([pool.examples[i].prompt_id for i in chosen]))
    print(f"{len(chosen)} of {len(todo)} unlabelled prompts chosen with {args.strategy} -> {path}")
    print(f"fill the 'response' column, then: llm-al annotate import {path} --pool {args.pool} --out LABELLED.jsonl")


def cmd_select(args: argparse.Namespace) -> None:
    from llm_al import api
    from llm_al.config import DataConfig
    from llm_al.config import parse_strategy
    from llm_al.data.export import write_subset
    from llm_al.strategies.needs import needed_features
    from llm_al.strategies.base import STRATEGIES

    name, params = parse_strategy(args.strategy)
    STRATEGIES.check(name, params)                  # parameter values, in the first second
    if args.order is not None:
        from llm_al.orderings import ORDERINGS

        ORDERINGS.check(args.order)
    if args.targets and name != "rds":
        print(f"note: --targets is read by the rds strategy only; {name} ignores it", file=sys.stderr)
    orderings = [args.order] if args.order else []
    needs = needed_features([(name, params)], orderings) | ({"embeddings"} if args.explain else set())
    model_cfg = api.model_config(args.model, embedder=args.embedder, scorer=args.scorer, device=args.device,
                                 max_length=args.max_length, trust_remote_code=args.trust_remote_code)
    pool = api.load_pool(args.pool, fields=_fields(args.field), system_prompt=args.system_prompt, split=args.split,
                         source_lang=args.source_lang, target_lang=args.target_lang, seed=args.seed)
    output_format = _check_subset_out(args.out, [args.pool, args.labelled], pool.format, args.dry_run)
    labelled = None if args.labelled is None else api.load_pool(
        args.labelled, fields=_fields(args.field), system_prompt=args.system_prompt, split=args.split,
        source_lang=args.source_lang, target_lang=args.target_lang, seed=args.seed)
    api.check_selection(pool, args.strategy, args.budget, labelled)        # before any scoring
    if args.dry_run:
        from llm_al.run.estimate import plan_select

        print(plan_select(pool, args.strategy, needs, model_cfg, args.budget, args.out, output_format))
        return
    picks = api.select(pool, args.strategy, args.budget, seed=args.seed, model=model_cfg, explain=args.explain,
                       labelled=labelled, targets=args.targets,
                       data=DataConfig(pool=args.pool, fields=_fields(args.field), split=args.split,
                                       system_prompt=args.system_prompt, source_lang=args.source_lang,
                                       target_lang=args.target_lang))
    columns = {
        "llm_al_id": [p.id for p in picks],
        "llm_al_rank": [p.rank for p in picks],
        "llm_al_score": [None if p.score is None else round(p.score, 6) for p in picks],
    }
    for col in picks[0].explanation:
        columns[col] = [p.explanation[col] for p in picks]
    rows = list(range(len(picks)))
    if args.order:                                  # the training order: rows re-sorted, columns with them
        at = {p.index: k for k, p in enumerate(picks)}
        rows = [at[i] for i in api.order(pool, picks, args.order, seed=args.seed, model=model_cfg)]
        columns = {col: [values[k] for k in rows] for col, values in columns.items()}
    path = write_subset(pool, [picks[k].index for k in rows], args.out, columns=columns, shape=args.export_shape)
    beside = "" if labelled is None else f" beside the {len(labelled)} in {args.labelled}"
    print(f"selected {len(picks)} of {len(pool)} examples{beside} with {args.strategy} (seed {args.seed}) -> {path}")
    print(f"llm_al_score is the {picks[0].reason}; llm_al_rank is the pick order"
          + (f"; the rows are in {args.order} order (train in file order: README, hand-off)" if args.order else ""))


def cmd_annotate_import(args: argparse.Namespace) -> None:
    """Validate the filled file completely, then write the labelled examples (with
    --keep-unlabelled the whole merged pool); nothing is written if any row is bad."""
    from llm_al.data.annotate import import_annotations, merge_labelled, read_manifest
    from llm_al.data.pool import load_pool
    from llm_al.data.export import write_subset

    manifest = Path(str(args.filled) + ".ids.json")
    if not Path(args.filled).expanduser().is_file():
        raise UserError(f"{args.filled}: no such file")
    pool = load_pool(args.pool, fields=_fields(args.field), labelled=False)
    _check_subset_out(args.out, [args.filled, args.pool, manifest], pool.format, False)
    asked = pool
    if manifest.exists():           # check completeness against what was exported, not the whole pool
        exported = read_manifest(manifest)
        asked = pool.subset([i for i, ex in enumerate(pool.examples) if ex.prompt_id in exported])
    new, report = import_annotations(args.filled, asked, require_all=manifest.exists() and not args.partial,
                                     partial=args.partial, accept_drafts=args.accept_drafts)
    merged = merge_labelled(pool, new)
    keep = [i for i, ex in enumerate(merged.examples) if args.keep_unlabelled or ex.is_labelled]
    if not keep:
        raise UserError(f"{args.filled}: no labelled examples to write (nothing answered, and the pool has no "
                        "labelled rows); --keep-unlabelled writes the merged pool anyway")
    path = write_subset(merged, keep, args.out)
    print(report.summary())
    left = len(merged) - len(keep)
    what = "examples" if args.keep_unlabelled else f"labelled examples ({left} unlabelled left out; --keep-unlabelled)"
    print(f"{len(new)} responses merged; {len(keep)} {what} -> {path}")


def cmd_eval_harness(args: argparse.Namespace) -> None:
    from llm_al.harness import evaluate_run

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    entries = evaluate_run(args.run_dir, tasks, args.limit, args.include_path, args.batch_size, args.device)
    for task, entry in entries.items():
        scores = ", ".join(f"{k} {v:.4g}" for k, v in entry["metrics"].items() if v is not None and "stderr" not in k)
        print(f"{task}: {scores} (n={entry['n_samples']})")


def _options_last(argv: list[str], options: dict[str, int]) -> list[str]:
    """argv with the given options (name -> how many values follow it; `--name=value` too) moved
    to the end, so they may stand among the key=value overrides."""
    rest, moved, i = [], [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        take = 1 + (options[name] if name in options and "=" not in argv[i] else 0)
        (moved if name in options else rest).extend(argv[i : i + take])
        i += take
    return rest + moved


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--dry-run` may stand anywhere among the key=value overrides, which argparse cannot interleave
    dry_run = "--dry-run" in argv[1:] and argv[:1] in (["demo"], ["run"])
    if argv[:1] == ["run"]:     # so may --ray, --workers N and --ray-address A
        argv = _options_last(argv, {"--ray": 0, "--workers": 1, "--ray-address": 1})
    try:
        args = _parser().parse_args([a for a in argv if not (dry_run and a == "--dry-run")] +
                                    (["--dry-run"] if dry_run else []))
    except SystemExit as exit_:                 # a usage error (one line, status 2) or --help (status 0)
        return int(exit_.code or 0)
    _setup_logging()
    try:
        if args.command == "list":
            cmd_list()
        elif args.command == "leaderboard":
            from llm_al.analysis.leaderboard import format_leaderboard, leaderboard
            from llm_al.io import check_output, write_text

            if args.out:
                check_output(args.out, [*args.results_dirs], label="--out")
            text = format_leaderboard(leaderboard(args.results_dirs))
            print(text)
            if args.out:
                write_text(args.out, text)
        elif args.command == "tasks":
            from llm_al.data.tasks import task_table

            print(task_table())
        elif args.command == "doctor":
            from llm_al.doctor import report

            text, healthy = report()
            print(text)
            return 0 if healthy else 1
        elif args.command == "demo":
            cmd_experiment(None, args.overrides, args.dry_run)
        elif args.command == "run" and (args.ray or args.workers is not None or args.ray_address) and not args.dry_run:
            cmd_ray(args)
        elif args.command == "run":
            cmd_experiment(args.recipe, args.overrides, args.dry_run)
        elif args.command == "select":
            cmd_select(args)
        elif args.command == "overlap":
            cmd_overlap(args)
        elif args.command == "annotate":
            cmd_annotate(args)
        elif args.command == "eval-harness":
            cmd_eval_harness(args)
        elif args.command == "report":
            from llm_al import api
            from llm_al.io import check_output

            check_output(args.out or Path(args.results_dir) / "report", folder=True)
            files = api.report(args.results_dir, args.out)
            print("\n".join(f"wrote {p}" for p in files.values()))
    except UserError as err:
        print(f"llm-al: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llm-al: interrupted; finished runs are saved, re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
