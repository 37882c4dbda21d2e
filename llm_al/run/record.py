"""What every run records: its header (cell, seeds, worker) and what it chose (selection, order,
subset features, overlap), shared by the one-run path (run/experiment.py) and packs (run/packed.py).
"""

from __future__ import annotations

import os
import socket

import numpy as np
from scipy import sparse

from llm_al.config import ExperimentConfig
from llm_al.features.probes import matrix_names
from llm_al.features.reference_index import selection_overlap
from llm_al.run.grid import Cell
from llm_al.seeds import stream_seed
from llm_al.types import MIN_K_FRACTIONS, SCALAR_FEATURES, Selection


def run_header(cell: Cell, common: dict) -> dict:
    """The keys every run record starts with: which cell, its seeds and streams, this worker."""
    streams = {"subset": stream_seed(cell.subset_seed, "subset"), "order": stream_seed(cell.order_seed, "order"),
               "init": stream_seed(cell.init_seed, "init")}
    return {"run_id": cell.run_id, "strategy": cell.strategy, "strategy_name": cell.name, "params": cell.params,
            "ordering": cell.ordering, "seeds": {"subset": cell.subset_seed, "order": cell.order_seed,
                                                 "init": cell.init_seed},
            "stream_seeds": streams, "budget": cell.budget, "worker": f"{socket.gethostname()}:{os.getpid()}",
            **common}


def selection_record(cfg: ExperimentConfig, data, features, index, sel: Selection, order: np.ndarray) -> dict:
    """The selection (ids, indices, scores), the training order, and describe_subset's figures."""
    score_by_index = dict(zip(sel.indices.tolist(), sel.scores.tolist()))
    return {
        "selection": {"ids": [data.pool.ids[i] for i in sel.indices], "indices": sel.indices.tolist(),
                      "scores": [None if np.isnan(s) else s for s in sel.scores.tolist()],
                      "score_name": sel.score_name},
        "order": {"ids": [data.pool.ids[i] for i in order],
                  "scores": [None if np.isnan(score_by_index[i]) else score_by_index[i] for i in order.tolist()]},
        **describe_subset(cfg, data, features, index, sel.indices),
    }


def describe_subset(cfg: ExperimentConfig, data, features, index, indices) -> dict:
    """What every run records about its chosen subset: feature means and overlap figures."""
    return {"subset_features": subset_means(features, indices),
            "overlap": selection_overlap(index, [data.pool.examples[i] for i in indices], data.test.examples,
                                         cfg.overlap.n)}


def subset_means(features, indices) -> dict:
    """Subset-level features (the paper's: each a mean of per-example scores under the untrained
    model), recorded for every run so `llm-al report` can correlate them with the test metric."""
    out = {}
    for name in SCALAR_FEATURES:
        value = getattr(features, name)
        if value is not None:
            out[name] = float(np.mean(value[indices]))
    if features.min_k is not None:
        for j, k in enumerate(MIN_K_FRACTIONS):
            out[f"min_k_{k}"] = float(np.mean(features.min_k[indices, j]))
    if features.min_k_plus is not None:
        for j, k in enumerate(MIN_K_FRACTIONS):
            out[f"min_k_plus_{k}"] = float(np.mean(features.min_k_plus[indices, j]))
    for name, value in sorted(features.scores.items()):
        if name in matrix_names() and sparse.issparse(value):   # n-gram counts: the subset's vocabulary size
            from llm_al.strategies.lexical import vocabulary_size

            out[f"{name}_vocabulary"] = float(vocabulary_size(value, indices))
            continue
        if name in matrix_names():      # (N, K) per-target-task similarities: the mean of each row's largest
            rows = np.asarray(value[indices], dtype=np.float64)
            rows = rows[~np.isnan(rows).any(1)]                          # NaN rows: the targets' own prompts
            if len(rows):
                out[f"{name}_row_max"] = float(rows.max(1).mean())
            continue
        out[name] = float(np.mean(value[indices]))
    if features.embeddings is not None:
        x = features.embeddings[indices]                                 # (B, D)
        out["embedding_spread"] = float(((x - x.mean(0)) ** 2).sum(1).mean())   # mean sq. distance to centroid
    return out
