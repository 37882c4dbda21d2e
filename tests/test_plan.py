"""`--dry-run` of `select` and `annotate export`: the plan is printed, no weights are loaded, nothing
is written, and bad input is still the one-line error with exit status 2."""

from __future__ import annotations

import json

import pytest

from llm_al.cli import main


@pytest.fixture()
def no_weights(monkeypatch):
    """Every way llm_al loads weights fails the test: the loaders, transformers' from_pretrained, and
    the conversion of the embedded model."""
    import transformers

    from llm_al import models

    def refuse(*args, **kwargs):
        raise AssertionError(f"weights loaded during a dry run: {args[:1]}")

    for name in ("load_model", "load_embedder", "_convert_gguf"):
        monkeypatch.setattr(models, name, refuse)
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def _bad(args, capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("llm-al: error:") and err.count("\n") == 1
    return err


def _written(folder) -> list:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("strategy, step", [
    ("perplexity:band=middle", "score 24 of 24 pool examples (0 cached)"),
    ("ifd", "score 24 of 24 pool examples without prompts (0 cached)"),
    ("kcenter", "embed 24 of 24 pool examples (0 cached)"),
    ("bald", "probe mc_dropout: 8 pass(es) over 24 pool examples"),
    ("random", "no model work"),
])
def test_select_dry_run_prints_the_plan_without_weights_or_output(tmp_path, pool_file, tiny_model_dir, cache_dir,
                                                                  capsys, no_weights, strategy, step):
    out = tmp_path / "chosen.jsonl"
    assert main(["select", str(pool_file), "--strategy", strategy, "--budget", "5", "--out", str(out),
                 "--model", str(tiny_model_dir), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "dry run" in printed and f"pool {pool_file}: 24 examples" in printed
    assert f"strategy {strategy}: budget 5 of 24" in printed and step in printed
    assert f"output {out} (jsonl): not written" in printed and "estimated total: ~" in printed
    if strategy != "random":
        assert "TFLOP" in printed and "GFLOP/s" in printed
    assert not out.exists() and _written(tmp_path) == ["pool.jsonl"]     # nor any feature cache


def test_select_dry_run_counts_what_the_caches_already_hold(tmp_path, pool_file, tiny_model_dir, cache_dir, capsys):
    """After a real selection the same dry run finds every example cached: the plan reads the caches
    where scoring writes them (loss and embeddings)."""
    half = tmp_path / "half.jsonl"
    half.write_text("".join(pool_file.read_text().splitlines(keepends=True)[:12]))
    for strategy in ("perplexity", "kcenter"):
        assert main(["select", str(half), "--strategy", strategy, "--budget", "3",
                     "--out", str(tmp_path / "real.jsonl"), "--model", str(tiny_model_dir)]) == 0
    capsys.readouterr()
    assert main(["select", str(pool_file), "--strategy", "deita", "--budget", "5", "--out", str(tmp_path / "x.jsonl"),
                 "--model", str(tiny_model_dir), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "features to compute: embeddings, loss" in printed
    assert "score 12 of 24 pool examples (12 cached)" in printed
    assert "embed 12 of 24 pool examples (12 cached)" in printed


def test_dry_run_of_the_embedded_model_does_not_convert_it(tmp_path, pool_file, cache_dir, capsys, no_weights):
    """The default model is converted on first use; a dry run sizes it from its GGUF header instead."""
    out = tmp_path / "chosen.jsonl"
    assert main(["select", str(pool_file), "--strategy", "perplexity", "--budget", "5", "--out", str(out),
                 "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "model embedded:smollm2-135m-instruct (135M parameters): not converted yet" in printed
    assert "score 24 of 24 pool examples (0 cached)" in printed
    assert not out.exists() and _written(cache_dir) == []


def test_select_dry_run_still_rejects_bad_input(tmp_path, pool_file, tiny_model_dir, cache_dir, capsys, no_weights):
    out = tmp_path / "o.jsonl"
    base = ["select", str(pool_file), "--out", str(out), "--dry-run", "--model", str(tiny_model_dir)]
    err = _bad(["select", str(tmp_path / "missing.jsonl"), "--out", str(out), "--budget", "1", "--dry-run"], capsys)
    assert "missing.jsonl" in err
    err = _bad([*base, "--budget", "3", "--strategy", "kcentre"], capsys)
    assert "Did you mean 'kcenter'" in err
    err = _bad([*base, "--budget", "25", "--strategy", "perplexity"], capsys)
    assert "budget of 25" in err and "pool of 24" in err
    err = _bad([*base, "--budget", "3", "--strategy", "perplexity:bnd=high"], capsys)
    assert "perplexity" in err and "bnd" in err
    err = _bad([*base, "--budget", "3", "--strategy", "superfiltering"], capsys)
    assert "scorer" in err
    err = _bad([*base, "--budget", "3", "--strategy", "perplexity", "--model", str(tmp_path / "nope")], capsys)
    assert "does not exist" in err
    err = _bad(["select", str(pool_file), "--out", str(tmp_path / "o.xlsx"), "--budget", "3", "--dry-run"], capsys)
    assert "output format" in err
    assert _written(tmp_path) == ["pool.jsonl"]


def test_a_budget_over_the_pool_fails_before_any_scoring(tmp_path, pool_file, tiny_model_dir, cache_dir, capsys,
                                                        no_weights):
    """Not only under --dry-run: the real command checks the budget before it loads a model."""
    err = _bad(["select", str(pool_file), "--strategy", "perplexity", "--budget", "30", "--out",
                str(tmp_path / "o.jsonl"), "--model", str(tiny_model_dir)], capsys)
    assert "budget of 30" in err and "pool of 24" in err


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Translate to French: {w}", "response": ""} for w in
            ("cat", "dog", "house", "tree", "river", "bread")]
    rows[0]["response"] = "chat"                                      # one already labelled
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("strategy, drafts, step", [
    ("random", True, "draft responses for 3 chosen prompts (<= 64 new tokens each)"),
    ("greedy_logprob", False, "probe greedy: 1 pass(es) over 5 pool examples"),
    ("kcenter", False, "embed 5 of 5 pool examples (0 cached)"),
])
def test_annotate_export_dry_run(tmp_path, prompts_file, tiny_model_dir, cache_dir, capsys, no_weights,
                                 strategy, drafts, step):
    out = tmp_path / "to_annotate.csv"
    args = ["annotate", "export", str(prompts_file), "--strategy", strategy, "--budget", "3", "--out", str(out),
            "--model", str(tiny_model_dir), "--dry-run"] + (["--drafts"] if drafts else [])
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "dry run" in printed and "6 examples, 5 without a response" in printed
    assert f"strategy {strategy}: budget 3 of 5" in printed and step in printed and "estimated total" in printed
    assert f"output {out} (+ to_annotate.csv.ids.json): not written" in printed
    assert _written(tmp_path) == ["prompts.jsonl"]


def test_annotate_export_dry_run_still_rejects_bad_input(tmp_path, prompts_file, tiny_model_dir, cache_dir, capsys,
                                                         no_weights):
    out = tmp_path / "to_annotate.csv"
    base = ["annotate", "export", str(prompts_file), "--out", str(out), "--dry-run"]
    err = _bad([*base, "--budget", "6"], capsys)
    assert "budget of 6" in err and "pool of 5" in err
    err = _bad([*base, "--budget", "2", "--strategy", "perplexity"], capsys)
    assert "reads reference responses" in err
    err = _bad(["annotate", "export", str(tmp_path / "none.jsonl"), "--out", str(out), "--budget", "1",
                "--dry-run"], capsys)
    assert "none.jsonl" in err
    err = _bad([*base[:-2], str(tmp_path / "to_annotate.xlsx"), "--dry-run", "--budget", "2"], capsys)
    assert "annotation file format" in err
    assert _written(tmp_path) == ["prompts.jsonl"]


def test_experiment_dry_run_counts_every_round_of_a_loop(tmp_path, pool_file, tiny_model_dir, cache_dir, capsys,
                                                         no_weights):
    """A loop of 1 round after a seed set of 2 (budget 6): each run trains on 2 then 6 examples,
    evaluates twice, and a model-reading strategy rescores the 22 examples left after the seed set."""
    recipe = tmp_path / "loop.yaml"
    recipe.write_text(f"name: loop\nout_dir: {tmp_path / 'out'}\nbudget: 6\nseeds: [0, 1]\n"
                      f"strategies: [random, perplexity]\ndata: {{pool: {pool_file}, test_size: 4}}\n"
                      f"model: {{name: {tiny_model_dir}, max_length: 64}}\n"
                      "loop: {rounds: 1, seed_size: 2, seed_strategy: random}\n")
    assert main(["run", str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train 4 runs x 2 rounds, 32 examples in all" in out                # 4 x (2 + 6)
    assert "rescore 36 pool examples in all under the rounds' adapters" in out   # 2 perplexity runs x (20 - 2)
    assert "x 9 evaluations" in out                                            # 4 runs x 2 rounds + the floor
    assert not (tmp_path / "out").exists()


def test_overlap_dry_run_tells_whether_the_index_must_be_built(tmp_path, pool_file, cache_dir, capsys, no_weights):
    ref = tmp_path / "ref.txt"
    ref.write_text("\n\n".join(f"paragraph {i} of a small reference corpus with enough words in it" for i in range(300)))
    args = ["overlap", str(pool_file), "--reference", str(ref), "--n", "4", "--no-similarity"]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"reference {ref} (1 file(s)" in out and "words to index streamed" in out
    assert "embedding similarity: skipped" in out
    assert not (cache_dir / "overlap").exists()                  # nothing indexed
    assert main(args) == 0                                       # the real command builds the index...
    capsys.readouterr()
    assert main([*args, "--dry-run"]) == 0                       # ...which the plan then finds
    assert "its 4-gram index is cached (3,600 words" in capsys.readouterr().out
    assert main([*args[:-1], "--dry-run"]) == 0                  # with similarity: the embedder's work, no weights
    out = capsys.readouterr().out
    assert "embed 24 of 24 pool examples (0 cached)" in out and "reference passages of 64 words (then cached)" in out
    _bad(["overlap", str(pool_file), "--reference", str(tmp_path / "missing"), "--dry-run"], capsys)


def test_synthesize_dry_run_plans_ranking_and_writing(tmp_path, prompts_file, tiny_model_dir, cache_dir, capsys,
                                                      no_weights):
    out = tmp_path / "new.jsonl"
    assert main(["annotate", "synthesize", str(prompts_file), "--out", str(out), "--n", "3",
                 "--model", str(tiny_model_dir), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "ranked by greedy_logprob" in text and "probe greedy: 1 pass(es)" in text
    assert "write 3 prompts from 3 examples each" in text and not out.exists()
    _bad(["annotate", "synthesize", str(prompts_file), "--out", str(tmp_path / "new.csv"), "--n", "3", "--dry-run"],
         capsys)
    _bad(["annotate", "synthesize", str(prompts_file), "--out", str(out), "--n", "3", "--from-strategy", "ifd",
          "--dry-run"], capsys)
    for flag, value in (("--n", "0"), ("--seeds-per-prompt", "0"), ("--max-rounds", "0")):   # were a NaN/ZeroDivision
        args = ["annotate", "synthesize", str(prompts_file), "--out", str(out), "--n", "3", flag, value]
        assert "must be >= 1" in _bad([*args, "--dry-run"], capsys)
        assert "must be >= 1" in _bad(args, capsys)                  # before any model work
