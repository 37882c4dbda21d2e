"""The embedded demo task: English-to-French translation of Django's UI strings.

Django ships its message catalogs (`locale/fr/LC_MESSAGES/*.mo`) in the wheel: ~760 English UI
strings with French translations, read here with the standard library. Strings with HTML, plural
forms, message contexts or more than 25 words are skipped, leaving ~740 pairs.

The held-out test set is fixed and documented: the 50 pairs of 3-20 English words whose
sha256(English text) sorts first. It depends only on the strings, not on file order or a seed;
with Django 5.2.x (pinned in the `demo` extra) it is the same set everywhere. The pool is every
other pair.
"""

from __future__ import annotations

import gettext
import hashlib
from pathlib import Path

from llm_al.errors import UserError

EMBEDDED_POOL = "embedded:django-en-fr"
TEST_SIZE = 50
SYSTEM_PROMPT = "Translate English to French."
TEMPLATE = "{source}"          # the system prompt states the task; the user turn is the English text
MAX_WORDS = 25                 # longer help texts would dominate padded batches on a CPU


def _catalog_files(lang: str) -> list[Path]:
    try:
        import django
    except ImportError:
        raise UserError("the embedded demo data needs Django's catalogs: pip install 'django>=5.2,<5.3' "
                        "(make setup does this)") from None
    root = Path(django.__file__).parent
    files = sorted(root.rglob(f"locale/{lang}/LC_MESSAGES/django*.mo"))
    if not files:
        raise UserError(f"Django {django.__version__} ships no catalogs for language {lang!r}")
    return files


def django_pairs(lang: str = "fr") -> list[tuple[str, str]]:
    """(English, translation) pairs from every Django catalog for `lang`, first occurrence kept."""
    pairs: dict[str, str] = {}
    for mo in _catalog_files(lang):
        with open(mo, "rb") as fh:
            catalog = gettext.GNUTranslations(fh)._catalog  # noqa: SLF001 (the stdlib has no public view)
        for src, tgt in catalog.items():
            if not isinstance(src, str) or not src.strip() or not isinstance(tgt, str) or not tgt.strip():
                continue  # plural forms have tuple keys; the header has an empty key
            if "\x04" in src or "<" in src or ">" in src:
                continue  # message contexts and HTML fragments
            if len(src.split()) <= MAX_WORDS:
                pairs.setdefault(src.strip(), tgt.strip())
    return sorted(pairs.items())


def _is_test_candidate(src: str) -> bool:
    return 3 <= len(src.split()) <= 20


def demo_records(lang: str = "fr", lang_name: str = "French") -> tuple[list[dict], list[dict]]:
    """(pool records, test records) in the translation shape llm_al.data.pool understands."""
    rows = [{"source": s, "target": t, "source_lang": "English", "target_lang": lang_name}
            for s, t in django_pairs(lang)]
    key = lambda r: hashlib.sha256(r["source"].encode()).hexdigest()  # noqa: E731
    candidates = sorted((r for r in rows if _is_test_candidate(r["source"])), key=key)
    test_sources = {r["source"] for r in candidates[:TEST_SIZE]}
    pool = [r for r in rows if r["source"] not in test_sources]
    test = [r for r in candidates[:TEST_SIZE]]
    return pool, test
