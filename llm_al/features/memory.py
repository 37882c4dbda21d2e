"""Accelerator memory: which exceptions mean "out of memory", and giving cached blocks back. Used by
scoring, training and generation when they back off to smaller batches."""

from __future__ import annotations


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The exception types torch raises when an accelerator runs out of memory."""
    import torch

    return tuple({getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)} - {None})


def free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
