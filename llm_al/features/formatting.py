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
    tail: int = 0
    """Tokens at the end of response_ids that the template adds after the plain response (the
    end-of-turn marker, or the EOS of the plain layout): trained on, but not part of the response
    whose difficulty IFD compares with and without the prompt."""

    @property
    def plain_ids(self) -> list[int]:
        """The response's own tokens, without the template's tail."""
        return self.response_ids[:len(self.response_ids) - self.tail]

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
    plains = tokenizer([ex.response for ex in examples], add_special_tokens=False)["input_ids"]
    out = []
    for p, r, plain in zip(prompts, responses, plains):
        tail = len(r) - len(plain) if r[:len(plain)] == plain else 0
        truncated = len(p) + len(r) > max_length
        if truncated:
            r = r[: max_length - min(len(p), max_length // 2)]
            p = p[len(p) - (max_length - len(r)):]
            tail = max(0, len(r) - len(plain)) if tail else 0         # what is left of the tail, if any
        out.append(Tokenized(p, r, truncated, tail))
    return out


def plain_start_id(tokenizer) -> int:
    """The token a plain text starts after, for scoring a response with no prompt (IFD's "direct
    answer", as Cherry LLM scores the bare response): the BOS the tokenizer puts before plain text
    (Llama's <s>); else the pretraining document separator <|endoftext|> (GPT-2, SmolLM2, Qwen);
    else a BOS or EOS that does not mark a chat turn. Not a chat template's turn opener: SmolLM2's
    BOS is <|im_start|>, after which the model expects a role name, not an answer."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    if len(full) > len(plain) and full[-len(plain):] == plain:
        return full[0]
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        return vocab["<|endoftext|>"]
    turn = set()
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                 add_generation_prompt=True)
        turn = set(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None and tid not in turn:
            return tid
    raise ValueError("the tokenizer has no token that starts a plain text outside a chat turn (no BOS it adds, "
                     "no <|endoftext|>, and its BOS/EOS open or close chat turns): IFD's direct pass cannot be "
                     "scored for this model")


class TokenTable(Sequence):
    """The Tokenized items of a whole pool kept in flat int32 buffers (4 bytes a token, where
    lists of Python ints take about 40): item i is rebuilt as a Tokenized when it is read, so a
    scoring pass over a million examples holds its token ids in a few hundred MB."""

    def __init__(self, prompt: np.ndarray, prompt_off: np.ndarray, response: np.ndarray,
                 response_off: np.ndarray, truncated: np.ndarray, tail: np.ndarray | None = None):
        self.prompt, self.prompt_off = prompt, prompt_off              # (P,), (N + 1,)
        self.response, self.response_off = response, response_off      # (R,), (N + 1,)
        self.truncated = truncated                                     # (N,) bool
        self.tail = np.zeros(len(truncated), np.int32) if tail is None else tail   # (N,) see Tokenized.tail

    def __len__(self) -> int:
        return len(self.truncated)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        return Tokenized(self.prompt[self.prompt_off[i]:self.prompt_off[i + 1]].tolist(),
                         self.response[self.response_off[i]:self.response_off[i + 1]].tolist(),
                         bool(self.truncated[i]), int(self.tail[i]))

    @property
    def lengths(self) -> np.ndarray:
        """(N,) tokens of each item, prompt and response."""
        return np.diff(self.prompt_off) + np.diff(self.response_off)

    def plain_after(self, prompt_ids: Sequence[int]) -> "TokenTable":
        """Each plain response (without the template's tail) after the one prompt `prompt_ids`:
        IFD's direct pass, as direct_items gives it."""
        n = len(self)
        keep = np.diff(self.response_off) - self.tail                  # (N,) plain tokens of each
        starts = self.response_off[:-1]
        flat = np.concatenate([self.response[s:s + k] for s, k in zip(starts, keep)]) if n else self.response[:0]
        return TokenTable(np.tile(np.asarray(prompt_ids, dtype=np.int32), n),
                          np.arange(n + 1, dtype=np.int64) * len(prompt_ids), flat.astype(np.int32),
                          np.concatenate([[0], np.cumsum(keep, dtype=np.int64)]), self.truncated)


def tokenize_table(tokenizer, examples: Sequence[Example], max_length: int, chunk: int = 4096) -> TokenTable:
    """tokenize() of every example, `chunk` at a time, into a TokenTable."""
    parts: dict[str, list] = {"p": [], "pl": [], "r": [], "rl": [], "t": [], "tail": []}
    for start in range(0, len(examples), chunk):
        for t in tokenize(tokenizer, examples[start:start + chunk], max_length):
            parts["p"].append(np.asarray(t.prompt_ids, dtype=np.int32))
            parts["r"].append(np.asarray(t.response_ids, dtype=np.int32))
            parts["pl"].append(len(t.prompt_ids))
            parts["rl"].append(len(t.response_ids))
            parts["t"].append(t.truncated)
            parts["tail"].append(t.tail)
    flat = lambda a: np.concatenate(a) if a else np.zeros(0, np.int32)            # noqa: E731
    offsets = lambda n: np.concatenate([[0], np.cumsum(n, dtype=np.int64)])      # noqa: E731
    return TokenTable(flat(parts["p"]), offsets(parts["pl"]), flat(parts["r"]), offsets(parts["rl"]),
                      np.array(parts["t"], dtype=bool), np.array(parts["tail"], dtype=np.int32))


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
    [rows[m], pos[m]] predicts targets[m], a token of member[m]. `members` are the item indices.
    plain: (M,) bool, True for the tokens of the plain response (not the template's tail)."""

    ids: "torch.Tensor"
    position_ids: "torch.Tensor"
    segment: "torch.Tensor"
    rows: "torch.Tensor"
    pos: "torch.Tensor"
    targets: "torch.Tensor"
    member: "torch.Tensor"
    members: list[int]
    prefix_len: int
    plain: "torch.Tensor"

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
    tail = np.array([items[i].tail for i in members], dtype=np.int64)                 # (n,)
    t = torch.from_numpy
    return PackedBatch(t(ids), t(position_ids), t(segment), t(row_of[member]), t(pos), t(targets), t(member),
                       members, P, t(k < (R - tail)[member]))
