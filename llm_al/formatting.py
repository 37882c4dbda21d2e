"""Turning an example into token ids: the model's chat template when it has one, a plain
"### Role:" layout when it has none. The response tokens are kept apart from the prompt tokens so
that losses and training see the response only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from llm_al.data import Example

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
    out = []
    for ex in examples:
        p_text, r_text = split_texts(tokenizer, ex)
        p = tokenizer(p_text, add_special_tokens=False)["input_ids"]
        r = tokenizer(r_text, add_special_tokens=False)["input_ids"]
        truncated = len(p) + len(r) > max_length
        if truncated:
            r = r[: max_length - min(len(p), max_length // 2)]
            p = p[len(p) - (max_length - len(r)):]
        out.append(Tokenized(p, r, truncated))
    return out


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
    import torch

    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state   # (B, T, H)
    logits = model.get_output_embeddings()(hidden[rows, pos]).float()                    # (M, V)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits
