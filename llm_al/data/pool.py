"""Load a pool of fine-tuning examples from a file, a folder or a hub id; write a chosen subset back.

An `Example` is a chat: an optional system message, user/assistant turns, and the assistant
response last. Its id is a hash of that content, so it depends on the data only. Accepted record
shapes: chat `messages`, ShareGPT `conversations`, Alpaca `instruction`/`input`/`output`,
`prompt`/`response` and translation pairs (a `translation` dict or `source`/`target`); `fields` maps
any other column names. Formats: JSON Lines, JSON, CSV/TSV, Parquet, `datasets` folders, hub ids.
Every problem with the data is a `DataError` that names the file, the row, the field and what is
valid; `write_subset` writes the chosen records back in the input's format.

Unlabelled pools (`labelled=False`): a record may lack its response in every shape (no response /
completion / output, no Alpaca output, a chat whose last turn is the user's, a translation with the
source only). Such an example's messages end with the user turn, its id hashes those prompt messages
only, and `.response` raises. Records that do have a response stay labelled examples, so a pool may
be mixed. `Example.prompt_id` (the hash of the prompt messages) is the same for a labelled example
and its unlabelled original; `llm_al.data.annotate` matches annotations by it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from llm_al.data.formats import json_loads, read_rows, record_keys, short_repr
from llm_al.errors import DataError

log = logging.getLogger("llm_al")

DEFAULT_TRANSLATION_TEMPLATE = "Translate this {source_lang} text into {target_lang}:\n{source}"
ROLES = ("prompt", "response", "system", "input", "instruction", "messages",
         "source", "target", "source_lang", "target_lang")
LANGUAGES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian",
             "pt": "Portuguese", "nl": "Dutch", "af": "Afrikaans", "fil": "Filipino",
             "ht": "Haitian Creole", "zh": "Chinese", "ja": "Japanese", "ru": "Russian",
             "ar": "Arabic", "hi": "Hindi"}
SHAPES_HELP = ("'messages' (a list of {role, content}); 'conversations' (ShareGPT {from, value}); "
               "'instruction' + 'output' (+ optional 'input', Alpaca); 'prompt' + 'response' "
               "(or 'completion' / 'output'); 'translation' ({'en': ..., 'fr': ...}); "
               "'source' + 'target' (+ optional 'source_lang', 'target_lang')")
_CHAT_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
               "gpt": "assistant", "model": "assistant"}

Row = tuple[str, int]  # (file label, 1-based row) for error messages


# ---------------------------------------------------------------- examples and pools


def content_id(messages: Sequence[dict[str, str]]) -> str:
    """First 16 hex chars of the sha256 of the messages as canonical JSON."""
    text = json.dumps(list(messages), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Example:
    """One training example: chat messages ending in the assistant response, or, if unlabelled
    (loaded with `labelled=False`), ending in the user turn that awaits one."""

    id: str
    messages: tuple[dict[str, str], ...]
    row: int
    source: dict
    system_injected: bool = False  # messages[0] is the load-time `system_prompt`, left out of the ids

    @property
    def is_labelled(self) -> bool:
        return self.messages[-1]["role"] == "assistant"

    @property
    def prompt_messages(self) -> tuple[dict[str, str], ...]:
        """Every message before the response (all of them if unlabelled)."""
        return self.messages[:-1] if self.is_labelled else self.messages

    @property
    def response(self) -> str:
        if not self.is_labelled:
            raise ValueError(f"example {self.id} (row {self.row}) is unlabelled: it has no response "
                             "(annotate it first, see llm_al.data.annotate)")
        return self.messages[-1]["content"]

    @property
    def prompt_id(self) -> str:
        """`content_id` of the prompt messages only: equal for a labelled example and its unlabelled
        original (whose `id` it is); like `id`, it ignores a load-time system prompt."""
        return content_id(self.prompt_messages[int(self.system_injected):])

    def with_response(self, response: str, source: dict) -> Example:
        """This example's prompt answered by `response`, as a labelled example (labelled content id)."""
        msgs = (*self.prompt_messages, {"role": "assistant", "content": response})
        return Example(content_id(msgs[int(self.system_injected):]), msgs, self.row, source, self.system_injected)

    @property
    def text(self) -> str:
        """The non-system contents joined by newlines (what an embedder sees)."""
        return "\n".join(m["content"] for m in self.messages if m["role"] != "system")

    def __hash__(self) -> int:  # `source` is a dict, so hash by the content id
        return hash(self.id)


@dataclass
class Pool:
    """The examples of one source, in source order, after dropping exact duplicates."""

    examples: list[Example]
    path: str | None
    format: str
    shape: str
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (row dropped, row kept)

    def __len__(self) -> int:
        return len(self.examples)

    def duplicates_note(self) -> str:
        """One line on the exact duplicates dropped while loading ('' when there were none)."""
        if not self.duplicates:
            return ""
        shown = ", ".join(str(d) for d, _ in self.duplicates[:10]) + ("..." if len(self.duplicates) > 10 else "")
        return f"{len(self.duplicates)} exact duplicate rows dropped (rows {shown})"

    def subset(self, indices: Sequence[int]) -> Pool:
        return Pool([self.examples[int(i)] for i in indices], self.path, self.format, self.shape)

    @property
    def ids(self) -> list[str]:
        return [ex.id for ex in self.examples]


# ---------------------------------------------------------------- records -> examples


@dataclass(frozen=True)
class _Plan:
    """How to read every record of a pool, decided from its first record."""

    shape: str
    build: str  # messages | alpaca | prompt_response | translation | wmt
    cols: dict[str, tuple[str, ...]]  # role -> candidate columns, first present wins
    mapped: dict[str, str] = field(default_factory=dict)  # column the user named -> its role
    codes: tuple[str | None, str | None] = (None, None)  # WMT source/target language codes
    labelled: bool = True  # False: the response (assistant turn, output, target) may be missing
    langs: tuple[str | None, str | None] = (None, None)  # source/target language where a record names none


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(rec: dict, names: Sequence[str], where: Row, required: bool = True) -> str | None:
    """The first present field of `names` as non-empty text; None if optional and absent."""
    name = next((n for n in names if n in rec and not is_missing(rec[n])), None)
    if name is None:
        if required:
            alts = " or ".join(repr(n) for n in names)
            raise DataError(f"missing field {alts}; fields found: {record_keys(rec)}", *where)
        return None
    value = rec[name]
    if not isinstance(value, str):
        raise DataError(f"field {name!r} must be text, got {type(value).__name__} {short_repr(value)}", *where)
    if not value.strip():
        if required:
            raise DataError(f"field {name!r} is empty", *where)
        return None
    return value


def _container(value: Any, name: str, where: Row) -> Any:
    """A list/dict field, decoding a JSON string (as CSV holds it)."""
    if isinstance(value, str):
        try:
            return json_loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"field {name!r} holds text that is not valid JSON ({e.msg})", *where) from None
    return value


def _chat(rec: dict, name: str, where: Row, labelled: bool = True) -> list[dict[str, str]]:
    """Messages from a list of {role, content} or ShareGPT {from, value} turns."""
    if name not in rec or is_missing(rec[name]):
        raise DataError(f"missing field {name!r}; fields found: {record_keys(rec)}", *where)
    turns = _container(rec[name], name, where)
    if not isinstance(turns, (list, tuple)) or not turns:
        raise DataError(f"field {name!r} must be a non-empty list of messages, got {short_repr(turns)}", *where)
    last = turns[-1] if isinstance(turns[-1], dict) else {}
    last_role = last.get("role", last.get("from"))
    if (not labelled and len(turns) > 1 and isinstance(last_role, str) and _CHAT_ROLES.get(last_role) == "assistant"
            and not str(last.get("content", last.get("value")) or "").strip()):
        turns = turns[:-1]  # an empty assistant placeholder: unlabelled
    msgs = []
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise DataError(f"{name}[{i}] must be an object with 'role' and 'content', got {short_repr(turn)}", *where)
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if not isinstance(role, str) or role not in _CHAT_ROLES:  # a list or dict role is not hashable
            raise DataError(f"{name}[{i}] has role {role!r}; valid roles: system, user, assistant "
                            "(ShareGPT: system, human, gpt, model)", *where)
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{name}[{i}] ({role}) must have non-empty text content, got {short_repr(content)}", *where)
        msgs.append({"role": _CHAT_ROLES[role], "content": content})
    for i, msg in enumerate(msgs[1:], 2):
        if msg["role"] == "system":
            raise DataError(f"{name}[{i}] is a system message; only the first message may be one", *where)
    if msgs[-1]["role"] != "assistant" and (labelled or msgs[-1]["role"] != "user"):
        raise DataError(f"the last message of {name!r} must be the assistant's response"
                        f"{'' if labelled else ' or (unlabelled) a user turn'}, got role {msgs[-1]['role']!r}", *where)
    if not any(m["role"] == "user" for m in msgs):
        raise DataError(f"{name!r} has no user message", *where)
    return msgs


def _language(value: str | None, default: str) -> str:
    return default if value is None else LANGUAGES.get(value.strip().lower(), value)


def _wmt(rec: dict, codes: tuple[str | None, str | None], where: Row,
         labelled: bool = True) -> tuple[str, str, str, str | None]:
    """(source name, target name, source text, target text) of a {'en': .., 'fr': ..} pair. Unlabelled,
    the target may be empty, null or (if fields name target_lang) absent."""
    if is_missing(rec.get("translation")):
        raise DataError(f"missing field 'translation'; fields found: {record_keys(rec)}", *where)
    pair = _container(rec["translation"], "translation", where)
    if not isinstance(pair, dict):
        raise DataError(f"field 'translation' must be an object of two languages like "
                        f"{{'en': '...', 'fr': '...'}}, got {short_repr(pair)}", *where)
    present = {k: v for k, v in pair.items() if not is_missing(v)}
    pair = present if labelled or len(present) >= 2 else pair  # unlabelled: a null value names the target
    src = codes[0] or next((k for k in pair if k != codes[1]), None)
    tgt = codes[1] or next((k for k in pair if k != src), None)
    if ((None in codes and len(pair) > 2) or src not in pair or tgt is None or src == tgt
            or (labelled and tgt not in pair)):
        raise DataError(f"field 'translation' must hold the source and target languages; found "
                        f"{', '.join(pair) or 'none'} (pick codes with fields={{'source_lang': .., "
                        f"'target_lang': ..}}{'' if labelled else '; unlabelled: the target may be empty'})", *where)
    return (_language(src, src), _language(tgt, tgt),
            _text(pair, (src,), where), _text(pair, (tgt,), where, labelled))


def _plan(rec: dict, fields: dict[str, str] | None, where: Row, labelled: bool = True) -> _Plan:
    cols = {role: (role,) for role in ROLES}
    cols["response"] = ("response", "completion", "output")
    if fields:
        if set(fields) <= {"source_lang", "target_lang"} and "translation" in rec:
            return _Plan("translation", "wmt", cols, codes=(fields.get("source_lang"), fields.get("target_lang")))
        cols.update({role: (col,) for role, col in fields.items()})
        if "messages" in fields:
            build = "messages"
        elif set(fields) & {"source", "target", "source_lang", "target_lang"}:
            build = "translation"
        elif set(fields) & {"instruction", "input"} or "instruction" in rec:
            build = "alpaca"
        else:
            build = "prompt_response"
        return _Plan("mapped", build, cols, {col: role for role, col in fields.items()})
    if "messages" in rec:
        return _Plan("messages", "messages", cols)
    if "conversations" in rec:
        return _Plan("sharegpt", "messages", {**cols, "messages": ("conversations",)})
    if "instruction" in rec and "output" in rec:
        return _Plan("alpaca", "alpaca", {**cols, "response": ("output",)})
    if "prompt" in rec and any(k in rec for k in cols["response"]):
        return _Plan("prompt_response", "prompt_response", cols)
    if "translation" in rec:
        return _Plan("translation", "wmt", cols)
    if "source" in rec and "target" in rec:
        return _Plan("translation", "translation", cols)
    if not labelled:  # a first record without its response
        if "instruction" in rec:
            return _Plan("alpaca", "alpaca", {**cols, "response": ("output",)})
        if "prompt" in rec:
            return _Plan("prompt_response", "prompt_response", cols)
        if "source" in rec:
            return _Plan("translation", "translation", cols)
    raise DataError(f"cannot tell which fields hold the prompt and the response; fields found: "
                    f"{record_keys(rec)}. Accepted shapes: {SHAPES_HELP}. Map other columns with "
                    f"--field prompt=question --field response=answer (in a recipe: data.fields) "
                    f"(roles: {', '.join(ROLES)})", *where)


def _messages(rec: dict, plan: _Plan, template: str, where: Row) -> list[dict[str, str]]:
    """The chat messages of one record (before any system-prompt injection)."""
    for col, role in plan.mapped.items():
        if col not in rec and (plan.labelled or role not in ("response", "target")):
            raise DataError(f"column {col!r} (mapped to {role!r}) is missing; fields found: {record_keys(rec)}", *where)

    def get(role: str, required: bool = True) -> str | None:
        return _text(rec, plan.cols[role], where, required)

    if plan.build == "messages":
        msgs = _chat(rec, plan.cols["messages"][0], where, plan.labelled)
    elif plan.build in ("prompt_response", "alpaca"):
        user = get("prompt" if plan.build == "prompt_response" else "instruction")
        extra = get("input", False) if plan.build == "alpaca" else None
        msgs = [{"role": "user", "content": user + ("\n\n" + extra if extra else "")},
                {"role": "assistant", "content": get("response", plan.labelled)}]
    else:
        if plan.build == "wmt":
            src_name, tgt_name, source, target = _wmt(rec, plan.codes, where, plan.labelled)
        else:
            source, target = get("source"), get("target", plan.labelled)
            src_name = _language(get("source_lang", False) or plan.langs[0], "the source language")
            tgt_name = _language(get("target_lang", False) or plan.langs[1], "the target language")
        user = template.format(source_lang=src_name, target_lang=tgt_name, source=source)
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": target}]
    if msgs[-1]["content"] is None:  # unlabelled: no response
        msgs.pop()
    system = get("system", False)
    if system and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def _check_options(fields: Any, system_prompt: Any, template: Any, label: str) -> None:
    if fields is not None and not isinstance(fields, dict):
        raise DataError(f"fields must map roles to column names, e.g. {{'prompt': 'question'}}, got {short_repr(fields)}", label)
    unknown = sorted(set(fields or {}) - set(ROLES))
    if unknown:
        raise DataError(f"{label}: unknown role(s) in fields: {', '.join(map(repr, unknown))}; "
                        f"valid roles: {', '.join(ROLES)}")
    for role, col in (fields or {}).items():
        if not isinstance(col, str) or not col:
            raise DataError(f"fields[{role!r}] must be a column name, got {short_repr(col)}", label)
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise DataError(f"system_prompt must be text, got {short_repr(system_prompt)}", label)
    try:
        template.format(source_lang="x", target_lang="y", source="z")
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise DataError(f"translation template {short_repr(template)} is invalid ({type(e).__name__}: {e}); "
                        "it may use only {source_lang}, {target_lang} and {source}", label) from None


def _build(rows: list[tuple[int, Any]], path: str | None, format: str, fields: dict[str, str] | None,
           system_prompt: str | None, template: str, labelled: bool = True,
           languages: tuple[str | None, str | None] = (None, None)) -> Pool:
    label = path or "in-memory records"
    _check_options(fields, system_prompt, template, label)
    if not rows:
        raise DataError("no examples (the source is empty)", label)
    plan, examples, kept, duplicates, unnamed = None, [], {}, [], 0
    for row, rec in rows:
        where = (label, row)
        if not isinstance(rec, dict):
            raise DataError(f"expected a record with named fields, got {type(rec).__name__} {short_repr(rec)}", *where)
        plan = plan or replace(_plan(rec, fields, where, labelled), labelled=labelled, langs=tuple(languages))
        msgs = _messages(rec, plan, template, where)
        unnamed += plan.build == "translation" and any(
            not _text(rec, plan.cols[role], where, False) and not name
            for role, name in zip(("source_lang", "target_lang"), plan.langs))
        ex_id = content_id(msgs)  # unlabelled: the prompt messages only, i.e. its prompt_id
        if ex_id in kept:
            duplicates.append((row, kept[ex_id]))
            continue
        kept[ex_id] = row
        injected = bool(system_prompt and system_prompt.strip() and msgs[0]["role"] != "system")
        if injected:
            msgs.insert(0, {"role": "system", "content": system_prompt})
        examples.append(Example(ex_id, tuple(msgs), row, rec, injected))
    if unnamed:
        log.warning(f"{label}: {unnamed} translation pairs name no source or target language, so their prompt "
                    "says 'the source language' / 'the target language'; name them with --source-lang/--target-lang "
                    "(data.source_lang / data.target_lang in a recipe)")
    return Pool(examples, path, format, plan.shape, duplicates)


def records_to_pool(records: list[dict], *, path: str | None = None, format: str = "memory",
                    fields: dict[str, str] | None = None, system_prompt: str | None = None,
                    translation_template: str = DEFAULT_TRANSLATION_TEMPLATE, labelled: bool = True,
                    languages: tuple[str | None, str | None] = (None, None)) -> Pool:
    """A pool from records already in memory; rows are numbered from 1 in list order. With
    `labelled=False` records may lack their responses (see the module docstring). `languages`:
    the (source, target) language of translation pairs whose records name none."""
    if isinstance(records, (dict, str, bytes)):
        raise DataError(f"expected a list of records, got {type(records).__name__}", path)
    return _build(list(enumerate(records, 1)), path, format, fields, system_prompt, translation_template, labelled,
                  languages)


def load_pool(spec: str, *, fields: dict[str, str] | None = None, system_prompt: str | None = None,
              split: str = "train", translation_template: str = DEFAULT_TRANSLATION_TEMPLATE,
              labelled: bool = True, languages: tuple[str | None, str | None] = (None, None)) -> Pool:
    """Load a pool from a file, a `save_to_disk` folder or a hub id (see `read_rows`). With
    `labelled=False` records may lack their responses; those that have one stay labelled.
    `languages`: the (source, target) language of translation pairs whose records name none."""
    rows, fmt = read_rows(spec, split=split)
    return _build(rows, str(spec), fmt, fields, system_prompt, translation_template, labelled, languages)


# ---------------------------------------------------------------- splitting and overlap


def split_pool(pool: Pool, test_size: int | float, seed: int) -> tuple[Pool, Pool]:
    """(train, test), seeded; `test_size` is a count (int) or a fraction in (0, 1) (float).
    Each part keeps the pool's order."""
    n = len(pool)
    if isinstance(test_size, (bool, np.bool_)) or not isinstance(test_size, (int, float, np.number)):
        raise DataError(f"test_size must be a count or a fraction in (0, 1), got {short_repr(test_size)}")
    if isinstance(test_size, (float, np.floating)):
        if not 0 < test_size < 1:
            raise DataError(f"test_size {test_size} as a fraction must lie strictly between 0 and 1")
        k = max(1, round(n * float(test_size)))
    else:
        k = int(test_size)
    if not 0 < k < n:
        raise DataError(f"cannot split {n} examples into a test set of {k} and a non-empty training set",
                        pool.path)
    order = np.random.default_rng(seed).permutation(n)
    return pool.subset(sorted(order[k:].tolist())), pool.subset(sorted(order[:k].tolist()))


def drop_overlap(pool: Pool, other: Pool) -> tuple[Pool, int]:
    """Remove from `pool` the examples that are in `other` (e.g. the test set) or share a prompt with
    one of its examples: a test prompt trained on with another response still leaks the test."""
    banned, prompts = set(other.ids), {ex.prompt_id for ex in other.examples}
    keep = [i for i, ex in enumerate(pool.examples) if ex.id not in banned and ex.prompt_id not in prompts]
    removed = len(pool) - len(keep)
    if not keep:
        raise DataError(f"all {len(pool)} examples also appear in {other.path or 'the other set'}",
                        pool.path or "in-memory records")
    if not removed:
        return pool, 0
    return replace(pool.subset(keep), duplicates=list(pool.duplicates)), removed
