from __future__ import annotations

from llm_al.data.demo import TEST_SIZE, demo_records, django_pairs


def test_demo_pool_and_fixed_test_set():
    pool, test = demo_records()
    assert len(test) == TEST_SIZE and len(pool) > 600
    assert not {r["source"] for r in pool} & {r["source"] for r in test}
    assert all(3 <= len(r["source"].split()) <= 20 for r in test)
    assert demo_records()[1] == test                      # no seed involved: the same set every time
    assert all(r["target_lang"] == "French" and r["target"] for r in pool)


def test_pairs_skip_html_and_contexts():
    pairs = django_pairs("fr")
    assert all("<" not in s and "\x04" not in s for s, _ in pairs)
    assert ("Cancel", "Annuler") in pairs or any(s == "Cancel" for s, _ in pairs)
