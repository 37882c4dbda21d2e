"""Named exceptions. A `UserError` is the user's to fix: the CLI prints its message (no traceback)
and exits with status 2. Messages name the file, row, bad value and the valid options."""

from __future__ import annotations


class UserError(Exception):
    """Bad input, config or request: reported to the user as one clear message."""


class DataError(UserError):
    """A pool, test set or annotation file that cannot be read as examples."""

    def __init__(self, message: str, path: str | None = None, row: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(where + message)
        self.path, self.row = path, row


class BudgetError(UserError):
    """Asked for more examples than the pool holds (or a non-positive budget)."""

    def __init__(self, budget: int, pool_size: int):
        if budget <= 0:
            msg = f"budget must be a positive number of examples, got {budget}"
        else:
            msg = f"asked for a budget of {budget} examples from a pool of {pool_size}"
        super().__init__(msg)
        self.budget, self.pool_size = budget, pool_size


class UnknownNameError(UserError, KeyError):
    """A name missing from a registry (strategy, ordering, metric) or a config key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class FeatureUnavailableError(UserError):
    """A strategy or ordering needs a feature the run cannot compute (e.g. no model configured)."""


class ConfigError(UserError):
    """A config value that is invalid or contradicts another one."""
