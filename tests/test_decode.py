"""Greedy decoding that drops finished rows (llm_al/decode.py) gives transformers' greedy
`generate` answer, runs only the rows still going, and keeps `generate` for models whose
generation config adds logits processors."""

from __future__ import annotations

import contextlib

import torch

from llm_al.decode import greedy_decode, plain_greedy
from llm_al.evaluate import left_pad, stop_token_ids


def _prompts(tok):
    texts = ["<|im_start|>user\nDelete<|im_end|>\n<|im_start|>assistant\n",
             "<|im_start|>user\nSave the changes now<|im_end|>\n<|im_start|>assistant\n",
             "<|im_start|>user\nCancel<|im_end|>\n<|im_start|>assistant\n",
             "<|im_start|>user\nAdd another one please<|im_end|>\n<|im_start|>assistant\n"]
    return left_pad([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.pad_token_id)


def _reference(model, ids, mask, n, stops, pad):
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                             eos_token_id=stops, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        kept = []
        for t in row:
            kept.append(t)
            if t in stops:
                break
        rows.append(kept)
    return rows


def _varied_model():
    """A random 2-layer Llama with large weights, whose greedy outputs vary by row and step (the
    tiny test model repeats one token everywhere)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


def test_greedy_decode_equals_generate_and_drops_finished_rows():
    """Stop ids chosen from the rows' own greedy tokens, so rows stop at different steps: the same
    tokens as generate, and the batch shrinks as rows stop."""
    model = _varied_model()
    g = torch.Generator().manual_seed(0)
    lengths = [5, 9, 3, 7, 6, 8]
    ids, mask = left_pad([torch.randint(3, 40, (n,), generator=g).tolist() for n in lengths], 0)
    free = _reference(model, ids, mask, 10, [2], 0)
    stops = sorted({free[0][3], free[1][1], 2})
    want = _reference(model, ids, mask, 10, stops, 0)
    assert len({len(r) for r in want}) > 1, want           # the rows do stop at different steps
    sizes = []

    @contextlib.contextmanager
    def route(rows):
        sizes.append(len(rows))
        yield

    got = greedy_decode(model, ids, mask, 10, stops, route)
    assert got == want
    assert sizes[0] == 6 and sizes[-1] == 1                 # rows left the batch; the longest ran alone
    assert sizes == sorted(sizes, reverse=True)
    assert sum(sizes) == sum(len(r) for r in got)         # one forward row per kept token, no waste


def test_generation_config_processors_keep_generate(tiny_model):
    model, _ = tiny_model
    assert plain_greedy(model)
    old = model.generation_config.repetition_penalty
    try:
        model.generation_config.repetition_penalty = 1.3
        assert not plain_greedy(model)
    finally:
        model.generation_config.repetition_penalty = old


def test_evaluate_generate_matches_transformers_generate(tiny_model):
    from llm_al.evaluate import generate

    model, tok = tiny_model
    prompts = ["<|im_start|>user\nDelete<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nSave the changes now<|im_end|>\n<|im_start|>assistant\n"]
    ids, mask = left_pad([tok(p, add_special_tokens=False)["input_ids"] for p in prompts], tok.pad_token_id)
    stops = stop_token_ids(model, tok)
    want = [tok.decode(r, skip_special_tokens=True).strip()
            for r in _reference(model, ids, mask, 6, stops, tok.pad_token_id)]
    assert generate(model, tok, prompts, 6, 2, progress_bar=False) == want
