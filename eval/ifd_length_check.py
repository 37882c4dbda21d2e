"""IFD's rank correlation with response length on 40 demo examples (offset argv[1]): the old direct pass
(<|im_start|> + response + <|im_end|>), the new one (<|endoftext|> + plain response) with the end-of-turn
marker kept in the numerator, and the full fix (neither pass scores the marker). Usage: eval/ifd_length_check.py 0"""
import numpy as np, torch
from scipy.stats import spearmanr
from transformers import AutoModelForCausalLM, AutoTokenizer
from llm_al.api import load_pool
from llm_al.models import embedded_model_dir
from llm_al.features.formatting import tokenize, Tokenized, plain_start_id
from llm_al.features.engine import response_token_stats, direct_items
torch.set_num_threads(1)
d = embedded_model_dir()
tok = AutoTokenizer.from_pretrained(d); model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
pool = load_pool()
import sys; ex = pool.examples[int(sys.argv[1]):int(sys.argv[1])+40]
items = tokenize(tok, ex, 512)
st = response_token_stats(model, items, tok.pad_token_id)
old = response_token_stats(model, [Tokenized([tok.bos_token_id], t.response_ids, t.truncated) for t in items], tok.pad_token_id)
new = response_token_stats(model, direct_items(items, plain_start_id(tok)), tok.pad_token_id)
words = np.array([len(e.response.split()) for e in ex])
ifd_old = (st[:, 0] / st[:, 2]) / (old[:, 0] / old[:, 2])
ifd_new = (st[:, -2] / st[:, -1]) / (new[:, 0] / new[:, 2])
print("n=40 demo pool examples, embedded SmolLM2-135M-Instruct (float32, CPU)")
print("start token old:", tok.convert_ids_to_tokens([tok.bos_token_id]), "new:", tok.convert_ids_to_tokens([plain_start_id(tok)]))
print("Spearman(IFD, response words): old %.3f  new %.3f" % (spearmanr(ifd_old, words)[0], spearmanr(ifd_new, words)[0]))
print("median IFD old %.3f new %.3f; share > 1: old %.2f new %.2f" % (np.median(ifd_old), np.median(ifd_new), (ifd_old > 1).mean(), (ifd_new > 1).mean()))
ifd_mid = (st[:, 0] / st[:, 2]) / (new[:, 0] / new[:, 2])
print("new direct pass, numerator with end-of-turn: Spearman %.3f" % spearmanr(ifd_mid, words)[0])
