"""Fine-tune on an `llm-al select` subset with TRL's SFTTrainer and a LoRA adapter, feeding the
examples in exactly the file's order (batch k of every epoch is rows k*B+1 .. (k+1)*B).

    pip install -e ".[trl]"                      # trl is an extra
    llm-al select embedded:django-en-fr --strategy kcenter --budget 100 --export-shape messages --out subset.jsonl
    python recipes/trl_sft.py subset.jsonl --model embedded:smollm2-135m-instruct --out runs/trl-sft
    # measured on a 2-core CPU shared with another job: select 6 s (embeddings already cached),
    # training 25 steps of 4 in 6.5 minutes

The subset may be in any shape `llm-al select` writes (--export-shape messages, alpaca, or the
pool's own records: prompt/response, instruction/output, source/target...) and any format it reads:
it is read with llm-al's own loader, which turns every row into chat messages in file order. Each
row becomes a TRL prompt-completion chat record (prompt: every message before the response;
completion: the response), so the loss falls on the response alone, as in llm-al's own training.
Defaults (lr, batch size, LoRA rank/alpha, constant schedule) are llm-al's `TrainConfig`.
--model takes embedded:smollm2-135m-instruct (the local converted folder), a folder or a hub id.

How the order is kept (read in transformers 5.25 / trl 1.16 sources):
- transformers' Trainer draws batches through a RandomSampler by default. Its public switch is
  `TrainingArguments.train_sampling_strategy="sequential"` (a SequentialSampler; transformers PR
  #43138), used here. On an older transformers without that field, a minimal SFTTrainer subclass
  overrides `_get_train_sampler`, the method that field selects in, to return a SequentialSampler.
- `shuffle_dataset=False` (TRL's default, set explicitly): True shuffles while preparing the data.
- `packing=False`: TRL's "bfd" packing sorts sequences by length (best-fit decreasing) and mixes
  examples into shared rows, so packing would reorder; it stays off. Length grouping is another
  `train_sampling_strategy` value ("group_by_length"), so "sequential" excludes it.
- TRL's preparation (map/filter) keeps row order, but drops rows left with no trainable token by
  truncation to --max-length: the script stops if the trainer holds fewer rows than the file.
- Every epoch replays the same order. --shuffle trains the same subset in random order, as a baseline.
- On several GPUs accelerate hands consecutive batches to the ranks in turn, so each optimiser
  step still covers the next world_size*B rows; it pads the last step with rows from the start.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path


def read_subset(path: str, system_prompt: str | None = None):
    """The subset as a `datasets.Dataset` of TRL prompt-completion chat records, in file order.
    Records without a system turn get `system_prompt` (as `llm-al select --system-prompt` gave them);
    a subset with no system turn at all gets a warning: the instruction an embedded task adds at load
    time ("Translate English to French.") is only in the file when it was exported as messages."""
    from datasets import Dataset

    from llm_al.data.pool import load_pool
    from llm_al.errors import UserError

    pool = load_pool(path, system_prompt=system_prompt)
    if not any(ex.messages[0]["role"] == "system" for ex in pool.examples):
        print(f"trl_sft.py: warning: {path} holds no system prompt; if llm-al added one when it read the pool "
              "(an embedded task, select --system-prompt), export with --export-shape messages or pass "
              "--system-prompt, else this trains on other prompts than llm-al's runs did", file=sys.stderr)
    if pool.duplicates:   # llm-al reads each example once: the trainer would not follow the file row by row
        raise UserError(f"{path}: {pool.duplicates_note()}; remove the repeats (or repeat with --epochs)")
    return Dataset.from_list([{"prompt": [dict(m) for m in ex.prompt_messages], "completion": [dict(ex.messages[-1])]}
                              for ex in pool.examples])


def sequential_trainer_class(shuffle: bool = False):
    """(SFTTrainer class, SFTConfig keywords) that feed the training set in order (`shuffle`: randomly)."""
    from torch.utils.data import SequentialSampler
    from trl import SFTConfig, SFTTrainer

    if "train_sampling_strategy" in {f.name for f in fields(SFTConfig)}:            # the public way
        return SFTTrainer, {"train_sampling_strategy": "random" if shuffle else "sequential"}
    if shuffle:
        return SFTTrainer, {}

    class SequentialSFTTrainer(SFTTrainer):   # transformers without train_sampling_strategy
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(self.train_dataset if train_dataset is None else train_dataset)

    return SequentialSFTTrainer, {}


def build_trainer(subset: str, model: str, out: str, *, epochs: int | None = None, lr: float | None = None,
                  batch_size: int | None = None, lora_r: int | None = None, lora_alpha: int | None = None,
                  max_length: int = 1024, max_steps: int = -1, seed: int = 0, shuffle: bool = False,
                  gradient_checkpointing: bool = False, device: str = "auto",
                  system_prompt: str | None = None):
    """An SFTTrainer with a LoRA adapter on `model`, ready to `.train()` on `subset` in file order.
    Unset values are llm-al's TrainConfig defaults."""
    import torch
    from peft import LoraConfig
    from trl import SFTConfig

    from llm_al.config import TrainConfig
    from llm_al.errors import UserError
    from llm_al.models import load_model

    d = TrainConfig()
    dataset = read_subset(subset, system_prompt)
    base, tokenizer = load_model(model, device=device)       # fp32 on CPU, bf16 on a GPU
    trainer_class, order = sequential_trainer_class(shuffle)
    names = {f.name for f in fields(SFTConfig)}     # transformers 5.x renamed gradient_ to activation_checkpointing
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    args = SFTConfig(
        output_dir=out, seed=seed, num_train_epochs=epochs or d.epochs, max_steps=max_steps,
        per_device_train_batch_size=batch_size or d.batch_size, gradient_accumulation_steps=1,
        learning_rate=lr or d.lr, lr_scheduler_type=d.schedule, warmup_steps=d.warmup_steps,
        weight_decay=d.weight_decay, max_grad_norm=d.max_grad_norm, max_length=max_length,
        packing=False, shuffle_dataset=False, dataloader_drop_last=False,
        bf16=next(base.parameters()).dtype == torch.bfloat16, use_cpu=str(base.device) == "cpu",
        logging_steps=1, save_strategy="no", report_to="none", **{checkpointing: gradient_checkpointing}, **order)
    lora = LoraConfig(r=lora_r or d.lora_r, lora_alpha=lora_alpha or d.lora_alpha, lora_dropout=d.lora_dropout,
                      target_modules=d.target_modules, task_type="CAUSAL_LM", bias="none")
    trainer = trainer_class(model=base, args=args, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=lora)
    if len(trainer.train_dataset) != len(dataset):
        raise UserError(f"{subset}: the trainer kept {len(trainer.train_dataset)} of {len(dataset)} examples (it drops "
                        f"those whose response is truncated away at --max-length {max_length}); raise --max-length")
    return trainer


def _parser() -> argparse.ArgumentParser:
    from llm_al.config import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("subset", help="an `llm-al select --out` file (any shape and format llm-al reads)")
    p.add_argument("--model", default="embedded:smollm2-135m-instruct", help="embedded:..., a folder or a hub id")
    p.add_argument("--out", required=True, help="folder for the LoRA adapter (and the tokenizer)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over the subset, each in the same order")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate ({d.schedule} schedule)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="examples per optimiser step")
    p.add_argument("--lora-r", type=int, default=d.lora_r, help="LoRA rank")
    p.add_argument("--lora-alpha", type=int, default=d.lora_alpha, help="LoRA alpha")
    p.add_argument("--max-length", type=int, default=1024, help="tokens per example (prompt + response)")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: all epochs)")
    p.add_argument("--system-prompt", default=None, help="for records without a system turn (as select's)")
    p.add_argument("--seed", type=int, default=0, help="LoRA initialisation seed")
    p.add_argument("--shuffle", action="store_true", help="random order instead (a baseline to compare with)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less memory, ~20%% slower")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return p


def main(argv: list[str] | None = None) -> Path:
    a = _parser().parse_args(argv)
    trainer = build_trainer(a.subset, a.model, a.out, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                            lora_r=a.lora_r, lora_alpha=a.lora_alpha, max_length=a.max_length,
                            max_steps=a.max_steps, seed=a.seed, shuffle=a.shuffle,
                            gradient_checkpointing=a.gradient_checkpointing, device=a.device,
                            system_prompt=a.system_prompt)
    result = trainer.train()
    trainer.save_model(a.out)              # a PeftModel saves the adapter only
    order = "random" if a.shuffle else "file"
    print(f"trained {len(trainer.train_dataset)} examples in {order} order ({result.global_step} steps, "
          f"final loss {result.training_loss:.4f}) -> adapter in {a.out}")
    return Path(a.out)


if __name__ == "__main__":
    from llm_al.errors import UserError

    try:
        main()
    except UserError as err:
        sys.exit(f"trl_sft.py: error: {err}")
