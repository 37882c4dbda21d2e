"""Shared fixtures. Nothing here touches a network: hub access is switched off for every test, and
the model is a random-init 2-layer Llama with a byte-level BPE tokenizer trained on the spot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PAIRS = [
    ("Cancel", "Annuler"), ("Save and continue editing", "Enregistrer et continuer les modifications"),
    ("Delete selected items", "Supprimer les objets sélectionnés"), ("Log out", "Déconnexion"),
    ("Change password", "Modifier le mot de passe"), ("Enter a valid date.", "Saisissez une date valide."),
    ("This field is required.", "Ce champ est obligatoire."), ("Yes", "Oui"), ("No", "Non"),
    ("Home", "Accueil"), ("Add another", "Ajouter un autre"), ("Save", "Enregistrer"),
    ("Search", "Rechercher"), ("Filter", "Filtre"), ("History", "Historique"), ("Close", "Fermer"),
    ("View on site", "Voir sur le site"), ("Enter a whole number.", "Saisissez un nombre entier."),
    ("Previous", "Précédent"), ("Next", "Suivant"), ("Today", "Aujourd’hui"), ("Now", "Maintenant"),
    ("Choose a time", "Choisir une heure"), ("Username", "Nom d’utilisateur"),
]


def pool_records(n: int = 24) -> list[dict]:
    rows = [{"source": s, "target": t, "source_lang": "English", "target_lang": "French"} for s, t in PAIRS]
    return rows[:n]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved random-init Llama (2 layers, hidden 64) with a ChatML BPE tokenizer (~600 tokens)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    text = [f"{s}\n{t}" for s, t in PAIRS] * 4 + ["Translate English to French.", "system user assistant"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>", model_max_length=512)
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         bos_token_id=fast.bos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from llm_al.models import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Feature/model caches in a fresh folder for each test."""
    monkeypatch.setenv("LLM_AL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def pool_file(tmp_path) -> Path:
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pool_records()), encoding="utf-8")
    return path


def synthetic_features(n: int = 40, dim: int = 8, seed: int = 0):
    """Features with every field filled, for the strategy and ordering contract suites."""
    from llm_al.types import Features

    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    from llm_al.types import MIN_K_FRACTIONS

    import llm_al.strategies.base  # noqa: F401  (registers every probe)
    from llm_al.features.probes import provided_names

    loss = rng.gamma(2.0, 1.0, n).astype(np.float32)
    scores = {name: rng.gamma(2.0, 1.0, n).astype(np.float32) for name in provided_names()}
    from scipy import sparse

    from llm_al.features.probes import matrix_names

    for name in matrix_names():        # (N, D) count matrices (n-grams), not scores: random sparse counts
        m_rng = np.random.default_rng(seed + 1)
        scores[name] = sparse.random(n, 64, density=0.15, format="csr", random_state=m_rng,
                                     data_rvs=lambda k: m_rng.integers(1, 4, k).astype(np.float64)).astype(np.int32)
    return Features(scores=scores, ids=[f"id{i}" for i in range(n)], length=rng.integers(1, 30, n).astype(np.float32),
                    loss=loss, entropy=rng.gamma(2.0, 1.0, n).astype(np.float32), n_tokens=rng.integers(1, 30, n),
                    min_k=-np.sort(rng.gamma(2.0, 1.0, (n, len(MIN_K_FRACTIONS))), axis=1)[:, ::-1].astype(np.float32),
                    min_k_plus=np.sort(rng.normal(-1.0, 1.0, (n, len(MIN_K_FRACTIONS))), axis=1).astype(np.float32),
                    direct_loss=(loss * rng.uniform(0.5, 1.5, n)).astype(np.float32),
                    scorer_ifd=rng.uniform(0.3, 1.3, n).astype(np.float32), embeddings=emb)


# ---------------------------------------------------------------------------- clusters and a labelled set
def cluster_rows(labels: np.ndarray, rng: np.random.Generator, dim: int = 16) -> tuple[np.ndarray, list[str]]:
    """Unit embeddings and prompt texts of examples in well-separated clusters: cluster j points
    along axis j (cosine ~0 between clusters, > 0.99 within) and each of its prompts is 5 words of
    its own 6-word vocabulary (c{j}w0 .. c{j}w5), so n-grams follow the clusters too."""
    emb = np.eye(dim)[labels] + 0.03 * rng.normal(size=(len(labels), dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    texts = [" ".join(f"c{j}w{w}" for w in rng.integers(0, 6, 5)) for j in labels]
    return emb.astype(np.float32), texts


def clustered_features(seed: int = 0):
    """Six well-separated clusters, three of them (drawn with `seed`) covered by a labelled set:
    (candidate Features with `.labelled` attached, (N,) cluster of each candidate, the sorted
    uncovered clusters). Covered clusters hold more candidates (12 against 6) and 24 labelled
    examples each, so a strategy that ignores the labelled set is drawn to them."""
    from llm_al.strategies.lexical import hashed_ngram_counts

    rng = np.random.default_rng(seed)
    covered = set(rng.choice(6, 3, replace=False).tolist())

    def rows(sizes: list[int], offset: int):
        labels = np.repeat(np.arange(6), sizes)
        f = synthetic_features(len(labels), 16, seed + offset)
        f.embeddings, texts = cluster_rows(labels, rng)
        f.scores["ngram_counts"] = hashed_ngram_counts(texts, 1)
        return f, labels

    cand, labels = rows([12 if j in covered else 6 for j in range(6)], 0)
    lab, _ = rows([24 if j in covered else 0 for j in range(6)], 1)
    lab.ids = [f"lab{i}" for i in range(len(lab))]
    return cand.with_labelled(lab), labels, sorted(set(range(6)) - covered)
