from __future__ import annotations

import re
from pathlib import Path

import pytest

from llm_al.config import ExperimentConfig, load_config, parse_strategy
from llm_al.errors import ConfigError, UnknownNameError, UserError

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_defaults_are_the_demo():
    cfg = load_config()
    assert cfg.budget == 100 and len(cfg.seeds) >= 3
    assert {"random", "perplexity", "kcenter"} <= {parse_strategy(s)[0] for s in cfg.strategies}


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_shipped_recipe_loads(recipe):
    assert isinstance(load_config(recipe), ExperimentConfig)


def test_recipes_exist():
    assert RECIPES, "no recipes shipped"


def test_overrides_and_scientific_floats(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("budget: 20\ntrain:\n  lr: 5e-4\n")
    cfg = load_config(recipe, ["train.epochs=3", "strategies=[kcenter]", "data.max_pool=null"])
    assert (cfg.budget, cfg.train.lr, cfg.train.epochs) == (20, 5e-4, 3)
    assert cfg.strategies == ["random", "kcenter"]             # random is always the baseline


@pytest.mark.parametrize("override, match", [
    (["trian.lr=1"], "unknown config key 'trian'. Did you mean 'train'"),
    (["train.lrr=1"], "unknown config key 'train.lrr'. Did you mean 'lr'"),
    (["strategies=[kcentre]"], "Did you mean 'kcenter'"),
    (["orderings=[shufled]"], "Did you mean 'shuffled'"),
    (["design=full"], "design must be one of paired, grid, grid_tied"),
    (["order_seeds=[]"], "order_seeds must be a non-empty list"),
    (["train.lr=abc"], "'train.lr' must be float, got 'abc'"),
    (["budget=0"], "budget must be a positive integer"),
    (["seeds=[1, 1]"], "distinct"),
    (["eval.primary=bleu", "eval.metrics=[chrf]"], "not among eval.metrics"),
    (["train.schedule=cosine"], "constant' or 'linear'"),
    (["lr"], "not key=value"),
    (["strategies=[a:{b]"], "cannot read"),
    (["strategies=[perplexity:band]"], "expected name:key=value"),
])
def test_bad_config_is_a_clear_error(override, match):
    with pytest.raises(UserError, match=match):
        load_config(None, override)


def test_missing_or_bad_recipe(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_parse_strategy():
    assert parse_strategy("perplexity:band=middle") == ("perplexity", {"band": "middle"})
    assert parse_strategy("random") == ("random", {})
    assert parse_strategy("weighted:weights={loss: 1, length: -0.5},x=2") == (
        "weighted", {"weights": {"loss": 1, "length": -0.5}, "x": 2})
    with pytest.raises(UnknownNameError):
        ExperimentConfig(strategies=["nope"])


def test_model_dtype_is_validated_and_applied(tiny_model_dir):
    import torch

    from llm_al.config import load_config
    from llm_al.errors import ConfigError
    from llm_al.models import load_model

    with pytest.raises(ConfigError, match="model.dtype must be one of auto, float32, bfloat16, float16"):
        load_config(None, ["model.dtype=bf16"])
    assert load_config(None, ["model.dtype=bfloat16"]).model.dtype == "bfloat16"
    model, _ = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    model, _ = load_model(str(tiny_model_dir), device="cpu", dtype="auto")
    assert next(model.parameters()).dtype == torch.float32        # auto on CPU


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_recipe_opens_with_its_command_and_run_time(recipe):
    header = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    assert any(f"llm-al run recipes/{recipe.name}" in line for line in header), f"{recipe.name}: no command"
    assert any(re.search(r"\bmin(ute)?s?\b", line) or "NOT YET MEASURED" in line for line in header), \
        f"{recipe.name}: no run time"


SCRIPTS = sorted((Path(__file__).parent.parent / "recipes").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_every_shell_recipe_command_parses(script):
    """Each `llm-al ...` line of a shell recipe is a valid command line (options, choices)."""
    import shlex

    from llm_al.cli import _parser

    lines = [line for line in script.read_text().splitlines() if line.startswith("llm-al ")]
    assert lines, f"{script.name} runs no llm-al command"
    env = {"POOL": "pool.jsonl", "OUT": "out"}
    for line in lines:
        words = shlex.split(line.replace('"$POOL"', env["POOL"]).replace('"$OUT', '"' + env["OUT"]))
        _parser().parse_args(words[1:])          # argparse exits (SystemExit) on a bad option
