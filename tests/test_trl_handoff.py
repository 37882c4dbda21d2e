"""recipes/trl_sft.py: TRL's SFTTrainer is fed an exported subset in exactly the file's order.

Every example carries a tag (`item07`) in its prompt; a wrapper around the trainer's data collator
decodes what each training batch actually holds, so the order is read from the batches themselves.
The same check run with --shuffle must see another order, which shows it would catch a shuffle.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trl")
ROOT = Path(__file__).resolve().parent.parent
N, BATCH, EPOCHS = 10, 4, 2


@pytest.fixture(autouse=True)
def one_torch_thread():
    """A 2-layer model gains nothing from threads, and on a busy machine OpenMP's waiting threads
    made these runs ~40x slower (11.6 s against 0.3 s for one training on a loaded 2-core box)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_recipe():
    spec = importlib.util.spec_from_file_location("trl_sft", ROOT / "recipes" / "trl_sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export_subset(tmp_path: Path, shape: str = "messages") -> tuple[Path, list[int]]:
    """N tagged examples written through write_subset in a known order that is not the pool's."""
    from llm_al.data.export import write_subset
    from llm_al.data.pool import records_to_pool

    pool = records_to_pool([{"prompt": f"item{k:02d}: say {w}", "response": f"{w} item{k:02d}"}
                            for k, w in enumerate(["Yes", "No", "Home", "Save", "Close", "Next", "Now", "Today",
                                                   "Search", "Filter"])])
    order = [int(i) for i in np.random.default_rng(3).permutation(N)]
    out = write_subset(pool, order, str(tmp_path / f"subset-{shape}.jsonl"), shape=shape,
                       columns={"llm_al_rank": list(range(1, N + 1))})
    return out, order


def expected_batches(order: list[int]) -> list[list[int]]:
    return [order[i:i + BATCH] for i in range(0, N, BATCH)] * EPOCHS


class BatchRecorder:
    """Wraps a data collator; records the tags of the examples in each batch it collates."""

    def __init__(self, collator, tokenizer):
        self.collator, self.tokenizer, self.batches = collator, tokenizer, []

    def __call__(self, features):
        texts = [self.tokenizer.decode(f["input_ids"]) for f in features]
        self.batches.append([int(re.search(r"item(\d\d)", t).group(1)) for t in texts])
        return self.collator(features)


def train_recorded(recipe, subset: Path, model: str, out: Path, **kw) -> tuple[list[list[int]], object]:
    trainer = recipe.build_trainer(str(subset), model, str(out), epochs=EPOCHS, batch_size=BATCH,
                                   max_length=64, device="cpu", **kw)
    trainer.data_collator = BatchRecorder(trainer.data_collator, trainer.processing_class)
    trainer.train()
    return trainer.data_collator.batches, trainer


def test_cli_trains_in_file_order_and_saves_a_loadable_adapter(tmp_path, tiny_model_dir, monkeypatch):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = load_recipe()
    subset, order = export_subset(tmp_path)
    build, seen = recipe.build_trainer, []

    def recorded_build(*args, **kw):
        trainer = build(*args, **kw)
        trainer.data_collator = BatchRecorder(trainer.data_collator, trainer.processing_class)
        seen.append(trainer.data_collator)
        return trainer

    monkeypatch.setattr(recipe, "build_trainer", recorded_build)
    out = recipe.main([str(subset), "--model", str(tiny_model_dir), "--out", str(tmp_path / "adapter"),
                       "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--max-length", "64", "--device", "cpu"])
    assert seen[0].batches == expected_batches(order), f"fed {seen[0].batches}, exported {order}"
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 16
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = PeftModel.from_pretrained(base, str(out))
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and any(torch.count_nonzero(p) for p in lora_b), "the saved adapter is untrained (lora_B all 0)"


def test_fallback_subclass_keeps_the_order_and_shuffle_is_caught(tmp_path, tiny_model_dir, monkeypatch):
    """On a transformers without train_sampling_strategy the subclass keeps the order; --shuffle
    (a RandomSampler) gives another order, so the comparison above would fail under shuffling."""
    recipe = load_recipe()
    subset, order = export_subset(tmp_path)
    shuffled, _ = train_recorded(recipe, subset, str(tiny_model_dir), tmp_path / "shuffled", shuffle=True)
    assert sorted(sum(shuffled[:3], [])) == sorted(order) and shuffled != expected_batches(order)

    monkeypatch.setattr(recipe, "fields", lambda cls: [f for f in dataclasses.fields(cls)
                                                       if f.name != "train_sampling_strategy"])
    trainer_class, extra = recipe.sequential_trainer_class()
    assert extra == {} and trainer_class.__name__ == "SequentialSFTTrainer"
    batches, trainer = train_recorded(recipe, subset, str(tiny_model_dir), tmp_path / "subclass")
    assert trainer.args.train_sampling_strategy == "random"      # the field's default: the subclass alone orders
    assert batches == expected_batches(order), f"fed {batches}, exported {order}"


@pytest.mark.parametrize("shape", ["messages", "alpaca", "input"])
def test_every_export_shape_reads_as_prompt_completion_in_file_order(tmp_path, shape):
    subset, order = export_subset(tmp_path, shape)
    data = load_recipe().read_subset(str(subset))
    assert [int(re.search(r"item(\d\d)", r["prompt"][-1]["content"]).group(1)) for r in data] == order
    assert all(r["completion"][0]["role"] == "assistant" and r["completion"][0]["content"].endswith(f"item{k:02d}")
               for r, k in zip(data, order))


def test_a_subset_without_its_system_prompt_is_warned_about_or_given_one(tmp_path, capsys):
    """An embedded task's instruction is added when llm-al reads the pool: a raw export lacks it."""
    subset = tmp_path / "raw.jsonl"
    subset.write_text('{"source": "Cancel", "target": "Annuler"}\n', encoding="utf-8")
    recipe = load_recipe()
    recipe.read_subset(str(subset))
    assert "holds no system prompt" in capsys.readouterr().err
    data = recipe.read_subset(str(subset), system_prompt="Translate English to French.")
    assert data[0]["prompt"][0] == {"role": "system", "content": "Translate English to French."}
    assert "holds no system prompt" not in capsys.readouterr().err


def test_truncated_away_examples_are_an_error_not_a_silent_gap(tmp_path, tiny_model_dir):
    from llm_al.errors import UserError

    subset, _ = export_subset(tmp_path)
    with pytest.raises(UserError, match=r"kept 0 of 10 examples .* raise --max-length"):
        load_recipe().build_trainer(str(subset), str(tiny_model_dir), str(tmp_path / "o"), max_length=4, device="cpu")


def test_docstring_commands_parse():
    """The two commands the recipe's docstring gives are valid command lines."""
    from llm_al.cli import _parser

    recipe = load_recipe()
    lines = [line.strip() for line in recipe.__doc__.splitlines()]
    select = [shlex.split(line)[1:] for line in lines if line.startswith("llm-al select")]
    train = [shlex.split(line.split("#")[0])[2:] for line in lines if line.startswith("python recipes/trl_sft.py")]
    assert select and train
    assert _parser().parse_args(select[0]).export_shape == "messages"
    assert recipe._parser().parse_args(train[0]).model == "embedded:smollm2-135m-instruct"


@pytest.mark.slow
def test_embedded_model_trains_one_step(tmp_path):
    recipe = load_recipe()
    subset, _ = export_subset(tmp_path)
    out = recipe.main([str(subset), "--model", "embedded:smollm2-135m-instruct", "--out", str(tmp_path / "a"),
                       "--max-steps", "1", "--batch-size", "2", "--device", "cpu"])
    assert (out / "adapter_config.json").exists()
