"""Named seed streams. One run seed derives independent streams for each source of randomness, so
the subset, the data order and the adapter initialisation can be varied separately (the paper this
toolkit serves could not separate them: one seed moved all three)."""

from __future__ import annotations

import numpy as np

STREAMS = {"subset": 1, "order": 2, "init": 3, "split": 4, "pool_sample": 5, "stats": 6}


def stream_seed(seed: int, stream: str) -> int:
    """A 32-bit seed for `stream`, a pure function of (seed, stream)."""
    if stream not in STREAMS:
        raise KeyError(f"unknown seed stream {stream!r}; streams: {', '.join(STREAMS)}")
    return int(np.random.SeedSequence([int(seed), STREAMS[stream]]).generate_state(1)[0])


def rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(stream_seed(seed, stream))


def run_seeds(seed: int) -> dict[str, int]:
    return {name: stream_seed(seed, name) for name in ("subset", "order", "init")}
