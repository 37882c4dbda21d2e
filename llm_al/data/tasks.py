"""The embedded tasks: real pools and fixed test sets built offline from installed packages.

`llm-al tasks` lists them; a recipe picks one with `task: NAME` (the same as `data.pool:
embedded:NAME`). Each test set is fixed by content hashes, not by a seed or file order, and drawn by
source unit (a string, a module, a topic), with the rest of a test unit's rows left out of the pool,
so no near-copy (another method of the same class, another paragraph of the same topic) leaks.

Every record carries `task`, so a pool that mixes tasks is evaluated per task and as the macro
average over them (llm_al.evaluate.score_predictions).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from llm_al.data import sources
from llm_al.data.demo import SYSTEM_PROMPT, TEMPLATE, TEST_SIZE, demo_records
from llm_al.errors import UserError
from llm_al.registries import TASKS

PREFIX = "embedded:"
PER_UNIT = 2                 # test rows drawn from one unit at most (a module holds up to ~100 functions)
MIXED_TEST = 25              # test rows per task in the mixed pool
DEV_SIZE = 20               # the default target set of rds (dev_records)
REFERENCE_TEST = 25          # the reference has only 266 usable distinct paragraphs
MIXED_DOCSTRINGS = 1000      # docstring rows in the mixed pool (the whole set would be 5,000 of its ~3,300)
DOCSTRING_SYSTEM = "Write the one-line docstring for this Python function."
REFERENCE_SYSTEM = "Write the opening sentence of this paragraph of the Python language reference."
CHAT_SYSTEM = "You are a friendly chatbot. Reply in a sentence or two."


@dataclass(frozen=True)
class TaskData:
    pool: list[dict]
    """Records in a shape llm_al.data.pool reads, each with its `task`."""
    test: list[dict]
    system_prompt: str | None
    """For records without their own `system`."""
    template: str | None
    """The user turn of translation records (None: llm_al.data.pool's default)."""
    split: str
    """How the test set was drawn."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_by_unit(rows: list[dict], test_size: int, per_unit: int = PER_UNIT) -> tuple[list[dict], list[dict]]:
    """(pool, test): units taken in sha256 order, up to `per_unit` rows of each (in sha256 order of
    the row) until `test_size`; every other row of a test unit is left out of both sides."""
    by_unit: dict[str, list[dict]] = {}
    for row in rows:
        by_unit.setdefault(row["unit"], []).append(row)
    test, test_units = [], set()
    for unit in sorted(by_unit, key=_sha):
        if len(test) >= test_size:
            break
        test_units.add(unit)
        ranked = sorted(by_unit[unit], key=lambda r: _sha(json.dumps(r, sort_keys=True)))
        test.extend(ranked[:min(per_unit, test_size - len(test))])
    pool = [r for r in rows if r["unit"] not in test_units]
    return pool, test


def _records(rows: list[dict], task: str, prompt: str, response: str, system: str | None = None) -> list[dict]:
    out = []
    for r in rows:
        rec = {"prompt": r[prompt], "response": r[response], "task": task}
        if system is not None:
            rec["system"] = system
        out.append(rec)
    return out


def _django(lang: str, name: str) -> TaskData:
    pool, test = demo_records(lang, name)
    task = f"django-en-{lang}"
    return TaskData([{**r, "task": task} for r in pool], [{**r, "task": task} for r in test],
                    SYSTEM_PROMPT.replace("French", name), TEMPLATE,
                    f"the {TEST_SIZE} strings of 3-20 English words whose sha256 sorts first (unit: the string)")


@TASKS.register("django-en-fr", "Django's UI strings, English to French (the demo's task)",
                source="django (locale/fr catalogs)", licence="BSD-3-Clause", kind="translation")
def django_en_fr() -> TaskData:
    return _django("fr", "French")


@TASKS.register("django-en-de", "Django's UI strings, English to German (a target language of the paper)",
                source="django (locale/de catalogs)", licence="BSD-3-Clause", kind="translation")
def django_en_de() -> TaskData:
    return _django("de", "German")


@TASKS.register("django-en-af", "Django's UI strings, English to Afrikaans (a low-resource target of the paper)",
                source="django (locale/af catalogs)", licence="BSD-3-Clause", kind="translation")
def django_en_af() -> TaskData:
    return _django("af", "Afrikaans")


def _unit_note(test: list[dict], what: str) -> str:
    units = Counter(r["unit"] for r in test)
    return (f"{len(test)} rows from the {len(units)} {what}s whose sha256 sorts first (at most {PER_UNIT} each); "
            f"the other rows of those {what}s are in neither side")


@TASKS.register("stdlib-docstrings",
                "write the one-line docstring of a Python standard-library function (its source, docstring removed)",
                source="the Python standard library of the running interpreter", licence="PSF-2.0", kind="code")
def stdlib_docstrings() -> TaskData:
    rows = list(sources.stdlib_functions())
    pool, test = split_by_unit(rows, TEST_SIZE)
    task = "stdlib-docstrings"
    return TaskData(_records(pool, task, "code", "summary"), _records(test, task, "code", "summary"),
                    DOCSTRING_SYSTEM, None,
                    _unit_note(test, "module") + f" (Python {sources.python_version()})")


def _reference_rows() -> list[dict]:
    return [{**r, "text": f"{r['title']}\n\n{r['rest']}"} for r in sources.reference_paragraphs()]


@TASKS.register("python-reference",
                "summarise a paragraph of the Python language reference as the sentence that opens it "
                "(small: ~190 in the pool)",
                source="pydoc_data.topics (standard library)", licence="PSF-2.0", kind="summary")
def python_reference() -> TaskData:
    rows = _reference_rows()
    pool, test = split_by_unit(rows, REFERENCE_TEST)
    task = "python-reference"
    return TaskData(_records(pool, task, "text", "opening"), _records(test, task, "text", "opening"),
                    REFERENCE_SYSTEM, None, _unit_note(test, "topic"))


@TASKS.register("chatterbot", "reply to a chat message (chatterbot-corpus: short, messy, often jokey)",
                source="chatterbot-corpus 1.3.3 (English)", licence="BSD-3-Clause", kind="chat")
def chatterbot() -> TaskData:
    rows = list(sources.chatterbot_exchanges())
    pool, test = split_by_unit(rows, TEST_SIZE)
    task = "chatterbot"
    return TaskData(_records(pool, task, "prompt", "reply"), _records(test, task, "prompt", "reply"),
                    CHAT_SYSTEM, None, f"the {len(test)} prompts whose sha256 sorts first (unit: the prompt)")


def _as_chat(data: TaskData, records: list[dict]) -> list[dict]:
    """Records with their task's system prompt and template applied, so tasks can share a pool."""
    out = []
    for r in records:
        if "source" in r:
            r = {"prompt": (data.template or "{source}").format(**r), "response": r["target"], "task": r["task"]}
        out.append({**r, "system": r.get("system", data.system_prompt)})
    return out


@TASKS.register("mixed-instructions",
                "a mixed instruction pool: docstrings, two translation directions, reference summaries and chat",
                source="the five tasks it mixes", licence="BSD-3-Clause and PSF-2.0", kind="mixed")
def mixed_instructions() -> TaskData:
    parts = ["stdlib-docstrings", "django-en-fr", "django-en-de", "python-reference", "chatterbot"]
    pool, test = [], []
    for name in parts:
        data = load_task(name)
        part_pool = sorted(data.pool, key=lambda r: _sha(json.dumps(r, sort_keys=True)))
        if name == "stdlib-docstrings":
            part_pool = part_pool[:MIXED_DOCSTRINGS]
        pool += _as_chat(data, part_pool)
        test += _as_chat(data, data.test[:MIXED_TEST])
    return TaskData(pool, test, None, None,
                    f"the first {MIXED_TEST} of each task's own test set ({len(parts)} tasks); the pool holds every "
                    f"pool row of the other tasks and the first {MIXED_DOCSTRINGS:,} docstring rows in sha256 order")


# ------------------------------------------------------------------------------ lookups


def is_task(pool: str) -> bool:
    return pool.startswith(PREFIX)


def task_name(pool: str) -> str:
    return pool[len(PREFIX):]


def dev_records(name: str, size: int = DEV_SIZE) -> list[dict]:
    """A task's dev split, the default target set of `rds`: `size` pool records, taken round-robin
    over the tasks in the pool (one for a plain task), each task's in sha256 order. They stay in the
    pool (the demo's pool is fixed by its recordings); rds leaves its target examples out of its picks."""
    by_task: dict[str, list[dict]] = {}
    for r in load_task(name).pool:
        by_task.setdefault(r["task"], []).append(r)
    queues = [sorted(rows, key=lambda r: _sha(json.dumps(r, sort_keys=True))) for _, rows in sorted(by_task.items())]
    out: list[dict] = []
    while len(out) < size and any(queues):
        for q in queues:
            if q and len(out) < size:
                out.append(q.pop(0))
    return out


@lru_cache(maxsize=None)
def load_task(name: str) -> TaskData:
    """The task's data (built once per process); an unknown name lists the valid ones."""
    return TASKS.get(name).fn()


def task_rows() -> list[dict]:
    """One row per task for `llm-al tasks`: name, sizes, kind, source, licence, split, description."""
    rows = []
    for entry in TASKS:
        try:
            data = load_task(entry.name)
        except UserError as err:            # e.g. a wheel it is built from is missing: the others still list
            rows.append({"task": entry.name, "pool": 0, "test": 0, "tasks_in_test": 0, **entry.meta,
                         "description": entry.description, "split": f"UNAVAILABLE: {err}"})
            continue
        rows.append({"task": entry.name, "pool": len(data.pool), "test": len(data.test),
                     "tasks_in_test": len({r["task"] for r in data.test}), **entry.meta,
                     "description": entry.description, "split": data.split})
    return rows


def task_table() -> str:
    """`llm-al tasks`: the tasks, their sizes and where they come from."""
    lines = []
    for r in task_rows():
        lines.append(f"{r['task']}  ({r['kind']}; pool {r['pool']:,}, test {r['test']}"
                     + (f" over {r['tasks_in_test']} tasks" if r["tasks_in_test"] > 1 else "") + ")")
        lines.append(f"    {r['description']}")
        lines.append(f"    source: {r['source']}; licence: {r['licence']}")
        lines.append(f"    test set: {r['split']}")
    lines.append("pick one with task=NAME in a recipe or on the command line (llm-al run RECIPE task=NAME)")
    return "\n".join(lines)
