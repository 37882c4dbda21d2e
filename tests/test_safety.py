"""Safe defaults and determinism, each tested so that removing it makes a test fail."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from llm_al.cli import main
from llm_al.config import load_config
from llm_al.errors import UserError
from llm_al.models import load_model

PACKAGE = Path(__file__).parent.parent / "llm_al"


def test_trust_remote_code_is_off_by_default():
    assert load_config().model.trust_remote_code is False


def test_weights_load_from_safetensors_only(tiny_model_dir, tmp_path):
    """A folder holding only a pickled checkpoint (pytorch_model.bin) is refused, not unpickled."""
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="could not load model"):
        load_model(str(folder), device="cpu")


def test_no_shell_true_no_eval_no_pickle_in_the_package():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), f"shell=True in {path}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec"), f"{node.func.id}() in {path}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                base = node.func.value
                name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
                assert name != "pickle", f"pickle.load in {path}"
                if name == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    assert "weights_only" in kw and kw["weights_only"].value is True, f"torch.load without weights_only in {path}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "np":
                kw = {k.arg: k.value for k in node.keywords}
                assert "allow_pickle" not in kw or kw["allow_pickle"].value is False, f"np.load(allow_pickle) in {path}"


def test_the_same_seeds_give_the_same_results(tiny_model_dir, pool_file, tmp_path, cache_dir):
    """Two runs of the whole pipeline: identical selections, orders, losses, predictions and metrics."""
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"source": "Delete", "target": "Supprimer"}) + "\n"
                    + json.dumps({"source": "Add", "target": "Ajouter"}) + "\n")
    common = ["demo", f"data.pool={pool_file}", f"data.test={test}", f"model.name={tiny_model_dir}",
              "model.max_length=64", "budget=5", "seeds=[0, 1]", "train.epochs=1", "train.batch_size=2",
              "train.lora_r=4", "train.lora_dropout=0.1", "eval.max_new_tokens=4", "progress=false",
              "strategies=[random, kcenter, perplexity]", "save_adapters=false"]
    for name in ("a", "b"):
        assert main([*common, f"out_dir={tmp_path / name}"]) == 0
    files = sorted(p.name for p in (tmp_path / "a" / "runs").glob("*.json"))
    assert len(files) == 7
    for name in files:
        a, b = (json.loads((tmp_path / d / "runs" / name).read_text()) for d in ("a", "b"))
        if name != "untrained.json":
            assert a["selection"] == b["selection"] and a["order"] == b["order"]
            assert a["train"]["losses"] == b["train"]["losses"]       # dropout is seeded too
            assert a["seeds"] == b["seeds"] and a["stream_seeds"] == b["stream_seeds"]
        assert a["eval"]["predictions"] == b["eval"]["predictions"]
        assert a["eval"]["metrics"] == b["eval"]["metrics"]
        assert a["versions"] == b["versions"]


def test_load_model_asks_for_safetensors_and_no_remote_code(tiny_model_dir, monkeypatch):
    """What load_model hands to transformers: use_safetensors=True and trust_remote_code=False."""
    import transformers

    seen = {}
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):
            seen[_name] = kwargs
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    load_model(str(tiny_model_dir), device="cpu")
    assert seen["AutoModelForCausalLM"]["use_safetensors"] is True
    assert seen["AutoModelForCausalLM"]["trust_remote_code"] is False
    assert seen["AutoTokenizer"]["trust_remote_code"] is False


def test_nothing_in_the_package_turns_remote_code_or_network_on():
    """No literal trust_remote_code=True, and no code that clears the HF offline switches."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), path
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            assert f'environ["{var}"] =' not in text and f"environ.pop(\"{var}\"" not in text, (path, var)


def test_offline_hub_id_fails_cleanly_without_opening_a_connection(monkeypatch):
    import socket

    connects = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: connects.append(addr))
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        load_model("no-such-org/no-such-model", device="cpu")
    assert connects == []


def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    """Results are written through a temporary file (mkstemp: mode 0600) and renamed; the file must
    end up as a plain open() would make it (0666 less the umask), or a shared results folder is
    unreadable to the rest of a team."""
    import os

    from llm_al import io

    io.write_json(tmp_path / "result.json", {"ok": 1})
    mode = (tmp_path / "result.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~io._UMASK
    umask = os.umask(0)                                      # and io's umask is the process's own
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_the_umask_is_read_without_changing_it():
    """io reads the umask from /proc (setting it to 0 to read it would briefly give other threads'
    files no umask); it must agree with the value os.umask reports."""
    import os

    from llm_al import io

    mask = os.umask(0o027)
    try:
        assert io._current_umask() == 0o027
    finally:
        os.umask(mask)
    assert io._current_umask() == mask


def test_out_dir_check_is_per_process(tmp_path):
    """Ray workers check one out_dir at once: a probe another process holds (here the old shared
    name, left as a directory) does not make this process's check fail."""
    from llm_al.run.experiment import check_out_dir

    (tmp_path / ".write-test").mkdir()
    check_out_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".write-test"]
