"""The n-gram index of a reference corpus, built once and cached under the corpus fingerprint, and the
overlap of a selection with it and with the test set (llm_al/features/overlap.py does the counting)."""

from __future__ import annotations

from llm_al import models
from llm_al.features.overlap import build_index, fingerprint_files
from llm_al.features.overlap_stats import subset_overlap, test_overlap


def reference_index_dir(spec: str, n: int, field: str = "text", split: str = "train"):
    """Where the n-gram index of a reference corpus is cached: named by the corpus fingerprint."""
    return models.cache_root() / "overlap" / f"{fingerprint_files([spec], field, split=split)}-n{n}"


def reference_index(spec: str, n: int, field: str = "text", split: str = "train"):
    """The n-gram index of a reference corpus, built once and cached by the corpus fingerprint."""
    out = reference_index_dir(spec, n, field, split)
    fingerprint = out.name[: -len(f"-n{n}")]
    return build_index(spec, out, n=n, fingerprint=fingerprint, field=field, split=split)


def selection_overlap(index, examples: list, test_examples: list | None, n: int) -> dict:
    """Overlap of chosen examples with the reference (whole example text) and of their responses
    with the test set's responses (the paper's "vocabulary overlap with the test targets")."""
    out: dict = {}
    if index is not None:
        out["reference"] = subset_overlap(index, [ex.text for ex in examples])
    if test_examples:
        out["test"] = test_overlap([ex.response for ex in examples], [ex.response for ex in test_examples], n=n)
    return out
