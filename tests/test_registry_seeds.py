from __future__ import annotations

import pytest

from llm_al.errors import UnknownNameError
from llm_al.registry import Registry
from llm_al.seeds import run_seeds, stream_seed


def test_registry_miss_lists_names_and_suggests():
    reg = Registry("widget")
    reg.register("alpha", "first")(lambda: 1)
    reg.register("beta", "second", needs=("x",))(lambda: 2)
    assert reg.names() == ["alpha", "beta"] and reg.get("beta").meta["needs"] == ("x",)
    with pytest.raises(UnknownNameError, match="unknown widget 'alpah'. Did you mean 'alpha'.*Valid widgets: alpha, beta"):
        reg.get("alpah")
    with pytest.raises(ValueError, match="twice"):
        reg.register("alpha", "again")(lambda: 3)


def test_seed_streams_are_separate_and_stable():
    s = run_seeds(0)
    assert len(set(s.values())) == 3
    assert s == run_seeds(0) and s != run_seeds(1)
    assert stream_seed(0, "order") == s["order"]
    with pytest.raises(KeyError):
        stream_seed(0, "nope")
