"""Turning an example into token ids: the model's chat template when it has one, a plain
"### Role:" layout when it has none. The response tokens are kept apart from the prompt tokens so
that losses and training see the response only."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from llm_al.data.pool import Example

if TYPE_CHECKING:
    import torch

PLAIN_HEADERS = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}


def prompt_text(tokenizer, messages: Sequence[dict]) -> str:
    """The text the model sees before it answers (generation starts right after it)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    body = "".join(PLAIN_HEADERS[m["role"]] + m["content"] + "\n\n" for m in messages)
    return body + PLAIN_HEADERS["assistant"]


def split_texts(tokenizer, example: Example) -> tuple[str, str]:
    """(prompt, response) texts; prompt + response is the whole templated conversation and the
    response ends with the template's end-of-turn marker, so the model learns to stop."""
    prompt = prompt_text(tokenizer, example.prompt_messages)
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(list(example.messages), tokenize=False)
        if not full.startswith(prompt):
            # Templates that rewrite earlier turns (e.g. drop reasoning) break the prefix property.
            raise ValueError(
                "the chat template does not render the prompt as a prefix of the conversation; "
                f"prompt ends {prompt[-60:]!r}, conversation starts {full[:len(prompt)][-60:]!r}"
            )
        return prompt, full[len(prompt):].rstrip("\n")
    return prompt, example.response + (tokenizer.eos_token or "")


@dataclass(frozen=True)
class Tokenized:
    prompt_ids: list[int]
    response_ids: list[int]
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


def tokenize(tokenizer, examples: Sequence[Example], max_length: int) -> list[Tokenized]:
    """Token ids for each example, at most `max_length` in all. Over-long examples keep the start of
    the response and the end of the prompt (at least half the window goes to the prompt when it
    needs it)."""
    if not examples:
        return []
    texts = [split_texts(tokenizer, ex) for ex in examples]
    prompts = tokenizer([p for p, _ in texts], add_special_tokens=False)["input_ids"]     # batched: the
    responses = tokenizer([r for _, r in texts], add_special_tokens=False)["input_ids"]  # same ids, faster
    out = []
    for p, r in zip(prompts, responses):
        truncated = len(p) + len(r) > max_length
        if truncated:
            r = r[: max_length - min(len(p), max_length // 2)]
            p = p[len(p) - (max_length - len(r)):]
        out.append(Tokenized(p, r, truncated))
    return out


class TokenTable(Sequence):
    """The Tokenized items of a whole pool kept in flat int32 buffers (4 bytes a token, where
    lists of Python ints take about 40): item i is rebuilt as a Tokenized when it is read, so a
    scoring pass over a million examples holds its token ids in a few hundred MB."""

    def __init__(self, prompt: np.ndarray, prompt_off: np.ndarray, response: np.ndarray,
                 response_off: np.ndarray, truncated: np.ndarray):
        self.prompt, self.prompt_off = prompt, prompt_off              # (P,), (N + 1,)
        self.response, self.response_off = response, response_off      # (R,), (N + 1,)
        self.truncated = truncated                                     # (N,) bool

    def __len__(self) -> int:
        return len(self.truncated)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        return Tokenized(self.prompt[self.prompt_off[i]:self.prompt_off[i + 1]].tolist(),
                         self.response[self.response_off[i]:self.response_off[i + 1]].tolist(),
                         bool(self.truncated[i]))

    @property
    def lengths(self) -> np.ndarray:
        """(N,) tokens of each item, prompt and response."""
        return np.diff(self.prompt_off) + np.diff(self.response_off)

    def with_prompt(self, prompt_ids: Sequence[int]) -> "TokenTable":
        """The same responses, each after the one prompt `prompt_ids` (IFD's direct pass)."""
        n = len(self)
        return TokenTable(np.tile(np.asarray(prompt_ids, dtype=np.int32), n),
                          np.arange(n + 1, dtype=np.int64) * len(prompt_ids), self.response, self.response_off,
                          self.truncated)


def tokenize_table(tokenizer, examples: Sequence[Example], max_length: int, chunk: int = 4096) -> TokenTable:
    """tokenize() of every example, `chunk` at a time, into a TokenTable."""
    parts: dict[str, list] = {"p": [], "pl": [], "r": [], "rl": [], "t": []}
    for start in range(0, len(examples), chunk):
        for t in tokenize(tokenizer, examples[start:start + chunk], max_length):
            parts["p"].append(np.asarray(t.prompt_ids, dtype=np.int32))
            parts["r"].append(np.asarray(t.response_ids, dtype=np.int32))
            parts["pl"].append(len(t.prompt_ids))
            parts["rl"].append(len(t.response_ids))
            parts["t"].append(t.truncated)
    flat = lambda a: np.concatenate(a) if a else np.zeros(0, np.int32)            # noqa: E731
    offsets = lambda n: np.concatenate([[0], np.cumsum(n, dtype=np.int64)])      # noqa: E731
    return TokenTable(flat(parts["p"]), offsets(parts["pl"]), flat(parts["r"]), offsets(parts["rl"]),
                      np.array(parts["t"], dtype=bool))


def pack(items: Sequence[Tokenized], pad_id: int):
    """Right-padded batch tensors plus where the response tokens are.

    Returns ids (B, T), mask (B, T), rows (M,), pos (M,), targets (M,): the hidden state at
    [rows[m], pos[m]] predicts token targets[m], for the M response tokens of the batch.
    """
    import torch

    T = max(t.length for t in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), T), dtype=torch.long)
    rows, pos, targets = [], [], []
    for b, t in enumerate(items):
        seq = t.prompt_ids + t.response_ids
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        P, R = len(t.prompt_ids), len(t.response_ids)
        rows += [b] * R
        pos += range(P - 1, P + R - 1)      # hidden state at t predicts token t+1
        targets += t.response_ids
    return ids, mask, torch.tensor(rows), torch.tensor(pos), torch.tensor(targets)


def response_logits(model, ids, mask, rows, pos):
    """(M, V) float32 logits at the response positions only: one decoder pass, and the LM head
    applied to the M hidden states that predict response tokens (none wasted on the prompt)."""
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state   # (B, T, H)
    return head_logits(model, hidden[rows, pos])                                         # (M, V)


def head_logits(model, hidden):
    """(M, V) float32 logits of the LM head over (M, H) hidden states (with the model's final-logit
    soft-capping, if it has one)."""
    import torch

    logits = model.get_output_embeddings()(hidden).float()                               # (M, V)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


# ---------------------------------------------------------------------------- packing after a shared prefix
def shared_prefix_length(items: Sequence[Tokenized]) -> int:
    """Tokens every item's prompt starts with (e.g. the system turn), short of each prompt's last
    token: the hidden state there predicts the first response token, so it stays in the suffix."""
    if not items:
        return 0
    first = np.asarray(items[0].prompt_ids, dtype=np.int64)
    n = min(len(t.prompt_ids) for t in items) - 1
    for t in items:
        if n <= 0:
            return 0
        differ = np.flatnonzero(np.asarray(t.prompt_ids[:n], dtype=np.int64) != first[:n])
        if differ.size:
            n = int(differ[0])
    return max(n, 0)


def plan_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into rows of at most `capacity` tokens, longest first, each into the fullest
    row that still has room (best-fit decreasing); an item longer than `capacity` gets a row of its
    own, so `capacity=0` means one item per row."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []                 # (room left, row), sorted
    for i in order:
        n = lengths[i]
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            room, r = free.pop(j)
            rows[r].append(i)
        else:
            room, r = capacity, len(rows)
            rows.append([i])
        if room - n > 0:
            bisect.insort(free, (room - n, r))
    return rows


@dataclass
class PackedBatch:
    """The suffixes (tokens after a shared prefix of `prefix_len`) of several items, packed into
    rows back to back with no padding between them.

    ids, position_ids, segment: (B, T); segment says which member a column holds (-1 for the
    padding at a row's end); position ids restart at `prefix_len` for each member. rows, pos,
    targets, member: (M,) for the M response tokens, grouped by member in order: the hidden state at
    [rows[m], pos[m]] predicts targets[m], a token of member[m]. `members` are the item indices."""

    ids: "torch.Tensor"
    position_ids: "torch.Tensor"
    segment: "torch.Tensor"
    rows: "torch.Tensor"
    pos: "torch.Tensor"
    targets: "torch.Tensor"
    member: "torch.Tensor"
    members: list[int]
    prefix_len: int

    def to(self, device) -> "PackedBatch":
        moved = {k: v.to(device) for k, v in vars(self).items() if hasattr(v, "to")}
        return PackedBatch(**{**vars(self), **moved})

    def attention_mask(self, four_d: bool, dtype=None):
        """The mask over [prefix, suffix] keys. 2D (B, P + T), 1 = real token, when each row holds
        one member (the model builds the causal mask); else 4D (B, 1, T, P + T): every query sees the
        whole prefix and the earlier tokens of its own member; bool, or additive in `dtype` (0 or
        the dtype's min) for attention implementations that add the mask to the scores.
        Padding columns attend to padding, so no softmax row is empty."""
        import torch

        B, T = self.ids.shape
        P = self.prefix_len
        if not four_d:
            return torch.cat([torch.ones((B, P), dtype=torch.long, device=self.ids.device),
                              (self.segment >= 0).long()], 1)
        causal = torch.ones((T, T), dtype=torch.bool, device=self.ids.device).tril()
        suffix = (self.segment[:, :, None] == self.segment[:, None, :]) & causal          # (B, T, T)
        mask = torch.cat([suffix.new_ones((B, T, P)), suffix], 2)[:, None]               # (B, 1, T, P+T)
        if dtype is None:
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def pack_suffixes(items: Sequence[Tokenized], rows: Sequence[Sequence[int]], prefix_len: int,
                  pad_id: int) -> PackedBatch:
    """One PackedBatch of `rows` (lists of item indices, as plan_rows gives), dropping the first
    `prefix_len` tokens of every item (they must be shared; see shared_prefix_length)."""
    import torch

    P = prefix_len
    members = [i for row in rows for i in row]
    suffixes = [items[i].prompt_ids[P:] + items[i].response_ids for i in members]
    L = np.array([len(s) for s in suffixes], dtype=np.int64)                          # (n,)
    plen = np.array([len(items[i].prompt_ids) - P for i in members], dtype=np.int64)  # (n,) >= 1
    R = L - plen                                                                        # (n,)
    assert plen.min() >= 1, f"prefix of {P} tokens leaves a prompt empty"
    row_of = np.repeat(np.arange(len(rows)), [len(r) for r in rows])                  # (n,)
    start = np.cumsum(L) - L                                                            # (n,) flat offsets
    first = np.cumsum([0] + [len(r) for r in rows[:-1]])                                # first member of each row
    off = start - start[first][row_of]                                                  # (n,) column in its row
    fill = np.bincount(row_of, weights=L, minlength=len(rows)).astype(np.int64)         # (B,)
    B, T = len(rows), int(fill.max())
    flat = np.fromiter((tok for s in suffixes for tok in s), dtype=np.int64, count=int(L.sum()))
    tok_member = np.repeat(np.arange(len(members)), L)                                  # (S,)
    within = np.arange(len(flat)) - start[tok_member]                                   # (S,)
    r_, c_ = row_of[tok_member], off[tok_member] + within
    ids = np.full((B, T), pad_id, dtype=np.int64)
    ids[r_, c_] = flat
    position_ids = np.full((B, T), P, dtype=np.int64)
    position_ids[r_, c_] = P + within
    segment = np.full((B, T), -1, dtype=np.int64)
    segment[r_, c_] = tok_member
    member = np.repeat(np.arange(len(members)), R)                                      # (M,)
    k = np.arange(int(R.sum())) - (np.cumsum(R) - R)[member]                            # (M,) index in response
    pos = off[member] + plen[member] - 1 + k             # the hidden state before each response token
    targets = flat[start[member] + plen[member] + k]
    t = torch.from_numpy
    return PackedBatch(t(ids), t(position_ids), t(segment), t(row_of[member]), t(pos), t(targets), t(member),
                       members, P)
