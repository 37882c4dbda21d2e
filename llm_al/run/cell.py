"""The steps every run of a cell takes, whether one-shot (run/experiment.py) or a round of the AL loop
(run/loop.py): order the labelled examples with the cell's ordering and order seed, then LoRA-train
on them in that order from the cell's init seed. One path, so both kinds of run train the same way.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llm_al.config import ExperimentConfig
from llm_al.data.pool import Example
from llm_al.features.formatting import tokenize
from llm_al.orderings import run_ordering
from llm_al.run.grid import Cell
from llm_al.seeds import rng, stream_seed
from llm_al.train import TrainResult, train_lora
from llm_al.types import Features


def order_for_training(cell: Cell, indices: Sequence[int] | np.ndarray, features: Features) -> np.ndarray:
    """Pool positions `indices` in the order the cell trains on them."""
    return run_ordering(cell.ordering, np.asarray(indices), features, rng(cell.order_seed, "order"))


def train_in_order(model, tokenizer, examples: Sequence[Example], order: np.ndarray, cell: Cell,
                   cfg: ExperimentConfig, progress: bool) -> tuple[object, TrainResult]:
    """A fresh adapter on `model`, trained on examples[order] in that order (the cell's init seed).
    Returns (the model with the adapter attached, what training did)."""
    items = tokenize(tokenizer, [examples[i] for i in order], cfg.model.max_length)
    return train_lora(model, items, tokenizer.pad_token_id, cfg.train, stream_seed(cell.init_seed, "init"),
                      progress_bar=progress)
