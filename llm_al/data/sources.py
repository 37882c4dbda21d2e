"""Raw material for the embedded tasks, read offline from what Python and installed wheels ship.

Each reader returns plain rows with the unit a task's test split is drawn by (a module, a topic, a
prompt), so that near-copies inside one unit never sit on both sides of the split:
- `stdlib_functions`: the functions of the Python standard library with a docstring (source with
  the docstring removed, the docstring's first sentence); unit = the module's file. The set depends
  on the Python minor version (3.12 dropped distutils, for one), so a task built from it names it.
- `reference_paragraphs`: prose paragraphs of the Python language reference that `pydoc` ships
  (`pydoc_data.topics`), split into their opening sentence and the rest; unit = the topic.
- `chatterbot_exchanges`: the first exchange of each English chatterbot-corpus conversation;
  unit = the prompt, case- and space-folded.
"""

from __future__ import annotations

import ast
import re
import sys
import sysconfig
import textwrap
from functools import lru_cache
from pathlib import Path

from llm_al.errors import UserError

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "turtledemo", "ensurepip",
             "pydoc_data", "__phello__", "__pycache__"}
MAX_CODE_CHARS = 900            # ~240 SmolLM2 tokens at 900 characters (at most ~380): recipes set model.max_length 384
MAX_CODE_LINES = 30
SENTENCE = re.compile(r"(.+?[.!?])(?:\s|$)", re.DOTALL)


def first_sentence(text: str) -> str:
    """The first sentence of `text`'s first paragraph, whitespace folded."""
    para = " ".join(text.strip().split("\n\n")[0].split())
    m = SENTENCE.match(para)
    return m.group(1) if m else para


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _function_rows(module: str, source: str) -> list[dict]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines = source.splitlines()
    rows = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        summary = first_sentence(doc)
        words = len(summary.split())
        if not 3 <= words <= 30 or "->" in summary or summary.startswith(node.name + "("):
            continue                      # signature lines ("f(x) -> y") are not summaries
        first = node.body[0]              # the docstring statement, cut out of the source
        code = textwrap.dedent("\n".join(lines[node.lineno - 1:first.lineno - 1] + lines[first.end_lineno:node.end_lineno]))
        n_lines = len(code.splitlines())
        if len(code) > MAX_CODE_CHARS or not 2 <= n_lines <= MAX_CODE_LINES:
            continue
        rows.append({"unit": module, "name": node.name, "code": code, "summary": summary})
    return rows


@lru_cache(maxsize=1)
def stdlib_functions() -> tuple[dict, ...]:
    """Every documented stdlib function of 2-30 lines (at most 900 characters without its
    docstring) whose docstring opens with a 3-30 word sentence; the first of identical bodies kept."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rows, seen = [], set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if set(rel.parts) & SKIP_DIRS:
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for row in _function_rows(rel.as_posix(), source):
            if row["code"] not in seen:
                seen.add(row["code"])
                rows.append(row)
    if not rows:
        raise UserError(f"found no documented functions under the standard library at {root}")
    return tuple(rows)


def _prose(paragraph: str) -> bool:
    lines = paragraph.splitlines()
    return bool(lines) and not any(line.startswith(" ") for line in lines) and not set(lines[-1]) <= set("*=-^~")


@lru_cache(maxsize=1)
def reference_paragraphs() -> tuple[dict, ...]:
    """(topic, title, opening sentence, rest) for prose paragraphs of 30-200 words whose opening
    sentence has 6-40 words and whose rest has at least 15. Some topics repeat others' paragraphs
    ("compound" holds "for", "while", "try", ...): a paragraph whose opening or rest was seen in an
    earlier topic (sorted by name) is dropped, so a split by topic cannot put one on both sides."""
    from pydoc_data.topics import topics

    rows, seen = [], set()
    for topic in sorted(topics):
        text = topics[topic]
        title = text.strip().splitlines()[0].strip()
        for para in text.split("\n\n"):
            if not _prose(para) or para.strip() == title:
                continue
            flat = " ".join(para.split())
            if not 30 <= len(flat.split()) <= 200:
                continue
            opening = first_sentence(flat)
            rest = flat[len(opening):].strip()
            if 6 <= len(opening.split()) <= 40 and len(rest.split()) >= 15 and not {opening, rest} & seen:
                seen.update((opening, rest))       # topics repeat each other ("compound" holds "for", "try",
                rows.append({"unit": topic, "title": title, "opening": opening, "rest": rest})   # ...): first kept
    return tuple(rows)


def _chatterbot_root() -> Path:
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        return Path(distribution("chatterbot-corpus").locate_file("chatterbot_corpus")) / "data" / "english"
    except PackageNotFoundError:
        raise UserError("the chat task needs chatterbot-corpus: pip install --no-deps chatterbot-corpus==1.3.3 "
                        "(make setup does this)") from None


@lru_cache(maxsize=1)
def chatterbot_exchanges() -> tuple[dict, ...]:
    """The first (prompt, reply) of each English conversation, the first of equal prompts kept."""
    import yaml

    rows, seen = [], set()
    for path in sorted(_chatterbot_root().glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            if not isinstance(conv, list) or len(conv) < 2:
                continue
            prompt, reply = (str(x).strip() for x in conv[:2])
            unit = " ".join(prompt.lower().split())
            if prompt and reply and unit not in seen:
                seen.add(unit)
                rows.append({"unit": unit, "category": path.stem, "prompt": prompt, "reply": reply})
    return tuple(rows)
