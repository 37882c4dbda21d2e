"""Why each example of a selection was picked, beyond its score and rank: which embedding cluster
of the pool it belongs to (k-means, k = min(10, budget)), and which earlier pick is nearest to it
with their cosine similarity, so near-duplicates inside a selection are visible."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llm_al.strategies.kernels.kmeans import kmeans

from llm_al.strategies.kernels.rows import unit
from llm_al.types import Features


def explain_selection(features: Features, indices: np.ndarray, ids: Sequence[str],
                      rng: np.random.Generator) -> dict[str, list]:
    """Columns aligned with `indices`: llm_al_cluster, llm_al_nearest_earlier_id, llm_al_nearest_earlier_sim
    (empty for the first pick)."""
    x = unit(features.require("embeddings").astype(np.float64))          # (N, D)
    k = min(10, len(indices), len(x))
    _, labels = kmeans(x, k, rng)
    chosen = x[indices]                                                   # (B, D)
    sims = chosen @ chosen.T                                              # (B, B)
    nearest_id, nearest_sim = [None], [None]
    for b in range(1, len(indices)):
        j = int(np.argmax(sims[b, :b]))
        nearest_id.append(ids[indices[j]])
        nearest_sim.append(round(float(sims[b, j]), 4))
    return {"llm_al_cluster": labels[indices].tolist(), "llm_al_nearest_earlier_id": nearest_id,
            "llm_al_nearest_earlier_sim": nearest_sim}
