"""Nothing lost, nothing wasted: no command overwrites its own input, and every argument is checked
before any model or corpus work. Each case of issue 13 is a test here; the hypothesis fuzzer at the
end throws generated argument values (paths that are inputs, folders, files as parents, unwritable
places, negative and huge numbers, bad strategy parameter values) at every command that writes.
CLI_FUZZ_EXAMPLES is the number of generated argument cases one run tries (the README figure)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_al import models
from llm_al.data.annotate import export_for_annotation, import_annotations
from llm_al.cli import main
from llm_al.data.pool import load_pool
from llm_al.data.formats import read_rows
from llm_al.errors import ConfigError, DataError
from llm_al.metrics import METRICS
from llm_al.orderings import ORDERINGS
from llm_al.registry import Registry, base_type, between, one_of, settable_params, value_problem
from llm_al.strategies.base import STRATEGIES, run_strategy
from llm_al.types import Selection

CLI_FUZZ_EXAMPLES = 120
ROOT = Path(__file__).resolve().parents[1]


class ModelLoaded(BaseException):
    """Raised (and never caught by the CLI) if a command loads a model or an embedder."""


def _every_binding() -> list[tuple[object, str]]:
    """(module, name) for every llm_al module attribute that holds one of the functions that load a
    model or do corpus work. Every llm_al module is imported first, so none is first imported
    (binding a name to the stand-in for good) while the stand-ins are in place."""
    import importlib
    import pkgutil
    import sys

    import llm_al
    from llm_al.features import reference_index
    from llm_al.run import pipeline

    for info in pkgutil.walk_packages(llm_al.__path__, "llm_al."):
        importlib.import_module(info.name)
    targets = {id(f): f.__name__ for f in (models.load_model, models.load_embedder, pipeline.compute_features,
                                           reference_index.reference_index)}
    return [(mod, attr) for name, mod in list(sys.modules.items()) if name.startswith("llm_al")
            for attr, value in list(vars(mod).items()) if id(value) in targets]


@contextlib.contextmanager
def no_model_work():
    def refuse(*_a, **_k):
        raise ModelLoaded("a model was loaded before the arguments were checked")

    with contextlib.ExitStack() as stack:
        for mod, attr in _every_binding():
            stack.enter_context(mock.patch.object(mod, attr, refuse))
        yield


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


def run_cli(argv: list, guard: bool = True) -> tuple[int, str]:
    """(exit status, stderr) of `llm-al argv`; with `guard`, loading a model fails the test."""
    err = io.StringIO()
    with no_model_work() if guard else contextlib.nullcontext(), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exit_:          # argparse
            rc = exit_.code
    return rc, err.getvalue()


def assert_one_line_error(rc: int, err: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llm-al: error:"), err


# ---------------------------------------------------------------------------- fixtures
def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def files(tmp_path) -> dict[str, Path]:
    pairs = [{"prompt": f"Say {w}", "response": w} for w in ("one", "two", "three", "four", "five", "six")]
    prompts = [{"prompt": f"Name {w}"} for w in ("a cat", "a dog", "a bird", "a fish")]
    out = {"pool": write_jsonl(tmp_path / "pool.jsonl", pairs),
           "prompts": write_jsonl(tmp_path / "prompts.jsonl", prompts)}
    pool = load_pool(str(out["prompts"]), labelled=False)
    sheet = export_for_annotation(pool, range(len(pool)), tmp_path / "sheet.csv")
    rows = read_rows(str(sheet))[0]
    with sheet.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0][1]))
        w.writeheader()
        w.writerows({**r, "response": f"answer {n}", "notes": "checked"} for n, (_, r) in enumerate(rows))
    out["sheet"] = sheet
    return out


# ---------------------------------------------------------------------------- 1. no command overwrites its input
def test_annotate_export_refuses_to_overwrite_its_pool(files):
    before = digest(files["prompts"])
    assert_one_line_error(*run_cli(["annotate", "export", files["prompts"], "--strategy", "random", "--budget", "3",
                                    "--out", files["prompts"]]))
    assert digest(files["prompts"]) == before


def test_overlap_refuses_to_overwrite_its_pool(files):
    before = digest(files["pool"])
    rc, err = run_cli(["overlap", files["pool"], "--no-similarity", "--out", files["pool"]])
    assert_one_line_error(rc, err)
    assert "is the input" in err and digest(files["pool"]) == before


def test_annotate_import_refuses_to_overwrite_the_filled_sheet(files):
    before = digest(files["sheet"])
    rc, err = run_cli(["annotate", "import", files["sheet"], "--pool", files["prompts"], "--out", files["sheet"]])
    assert_one_line_error(rc, err)
    assert digest(files["sheet"]) == before


@pytest.mark.parametrize("alias", ["symlink", "hardlink", "dotdot"])
def test_an_input_reached_another_way_is_still_the_input(files, tmp_path, alias):
    out = tmp_path / f"alias-{alias}.jsonl"
    if alias == "symlink":
        out.symlink_to(files["pool"])
    elif alias == "hardlink":
        os.link(files["pool"], out)
    else:
        (tmp_path / "sub").mkdir()
        out = tmp_path / "sub" / ".." / "pool.jsonl"
    before = digest(files["pool"])
    for argv in (["select", files["pool"], "--budget", "2", "--out", out],
                 ["overlap", files["pool"], "--no-similarity", "--out", out]):
        assert_one_line_error(*run_cli(argv))
    assert digest(files["pool"]) == before


# ---------------------------------------------------------------------------- 2. bad parameter values, in the first second
BAD_SPECS = ["perplexity:band=top", "min_k:k=0.25", "window:start=2", "deita:by=nonsense",
             "facility_location:max_dense=-1", "kcenter:device=gpu", "min_k_plus:prefer=weird",
             "score_then_diversify:fraction=0"]


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_bad_parameter_values_fail_select_before_any_scoring(files, tmp_path, spec):
    for extra in ([], ["--dry-run"]):
        rc, err = run_cli(["select", files["pool"], "--strategy", spec, "--budget", "2",
                           "--out", tmp_path / "chosen.jsonl", *extra])
        assert_one_line_error(rc, err)
        assert spec.split(":")[1].split("=")[0] in err
    assert not (tmp_path / "chosen.jsonl").exists()


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_bad_parameter_values_fail_a_recipe_and_its_dry_run(tmp_path, spec):
    for extra in ([], ["--dry-run"]):
        rc, err = run_cli(["run", ROOT / "recipes" / "tiny_smoke.yaml", f"strategies=[{spec}]",
                           f"out_dir={tmp_path / 'run'}", *extra])
        assert_one_line_error(rc, err)
    assert not (tmp_path / "run").exists()


class Untouchable:
    """A Features stand-in that fails the test if a strategy reads anything from it."""

    def __len__(self) -> int:
        return 40

    def __getattr__(self, name):
        raise AssertionError(f"features.{name} was read before the parameters were checked")


def wrong_type_values(hint) -> list:
    """Values of another type than `hint` admits, chosen from the type alone."""
    base = base_type(hint)
    candidates = {str: [12345, ["x"]], int: ["abc", 1.5, True], float: ["abc", True], bool: ["yes", 1]}
    out = [v for t, vs in candidates.items() for v in vs if base is t]
    if getattr(base, "__origin__", None) is Literal:
        out += ["not-an-option", 3]
    name = str(base)
    if "Mapping" in name:
        out += [[1, 2], "abc"]
    if "Sequence" in name:
        out += ["abc", [1.5]]
    if "Union" in name or " | " in name:                 # X | None: each member's wrong types, minus None's
        for member in base.__args__:
            out += [v for v in wrong_type_values(member) if value_problem(v, hint)]
    return out


def bad_values(hint) -> list:
    values = wrong_type_values(hint)
    for layer in [hint, *getattr(hint, "__args__", ())]:
        for meta in getattr(layer, "__metadata__", ()):
            values += list(getattr(meta, "counterexamples", ()))
    return values


CASES = [(e.name, key, value) for e in STRATEGIES for key, hint in settable_params(e.fn).items()
         for value in bad_values(hint)]


def test_every_parameter_of_every_strategy_has_bad_values_to_try():
    params = [(e.name, k) for e in STRATEGIES for k in settable_params(e.fn)]
    tried = {(name, key) for name, key, _ in CASES}
    assert params and set(params) == tried, set(params) - tried


@pytest.mark.parametrize("name,key,value", CASES, ids=[f"{n}-{k}={v!r}"[:60] for n, k, v in CASES])
def test_contract_a_bad_value_is_a_config_error_before_any_feature(name, key, value):
    with pytest.raises(ConfigError, match=key):
        STRATEGIES.check(name, {key: value})
    with pytest.raises(ConfigError, match=key):
        run_strategy(name, Untouchable(), 5, np.random.default_rng(0), **{key: value})


def test_a_new_strategy_gets_the_check_from_its_annotations_alone():
    reg: Registry = Registry("strategy", "strategies")

    @reg.register("throwaway", "a strategy registered in a test", needs=())
    def throwaway(features, budget, rng, band: Literal["a", "b"] = "a",
                  share: Annotated[float, between(0, 1)] = 0.5,
                  by: Annotated[str, one_of(["x", "y"])] = "x") -> Selection:
        raise AssertionError("never run")

    reg.check("throwaway", {"band": "b", "share": 1, "by": "y"})
    for params, needle in [({"band": "c"}, "band='c'.*one of a, b"), ({"share": 2}, r"share=2.*\[0, 1\]"),
                           ({"by": "z"}, "by='z'.*one of x, y"), ({"shar": 0.1}, "no parameter 'shar'.*'share'"),
                           ({"share": "half"}, "share='half'.*a number")]:
        with pytest.raises(ConfigError, match=needle):
            reg.check("throwaway", params)


@pytest.mark.parametrize("registry", [ORDERINGS, METRICS], ids=["orderings", "metrics"])
def test_orderings_and_metrics_take_no_unknown_parameters(registry):
    for entry in registry:
        registry.check(entry.name)
        with pytest.raises(ConfigError, match="no parameter 'x'"):
            registry.check(entry.name, {"x": 1})


def test_an_unknown_ordering_fails_a_dry_run_at_once(tmp_path):
    rc, err = run_cli(["run", ROOT / "recipes" / "tiny_smoke.yaml", "orderings=[nope]", "--dry-run"])
    assert_one_line_error(rc, err)


# ---------------------------------------------------------------------------- 3. one line where there were tracebacks
def test_out_that_is_a_folder_a_file_parent_or_unwritable(files, tmp_path):
    (tmp_path / "folder").mkdir()
    for out in (tmp_path / "folder", files["prompts"] / "x.jsonl", "/proc/llm_al_no/x.jsonl", "/proc/x.jsonl"):
        for argv in (["select", files["pool"], "--strategy", "kcenter", "--budget", "2", "--out", out],
                     ["annotate", "export", files["prompts"], "--budget", "2", "--out", out],
                     ["overlap", files["pool"], "--no-similarity", "--out", out],
                     ["annotate", "import", files["sheet"], "--pool", files["prompts"], "--out", out]):
            assert_one_line_error(*run_cli(argv))


def test_negative_seed_and_counts_are_one_line(files, tmp_path):
    out = tmp_path / "c.jsonl"
    for argv in (["select", files["pool"], "--budget", "2", "--seed", "-1", "--out", out],
                 ["select", files["pool"], "--budget", "-2", "--out", out],
                 ["select", files["pool"], "--budget", "two", "--out", out],
                 ["overlap", files["pool"], "--n", "0"],
                 ["annotate", "synthesize", files["prompts"], "--n", "-5", "--out", out]):
        assert_one_line_error(*run_cli(argv))


# ---------------------------------------------------------------------------- 4. drafts are not labels
def drafted_sheet(tmp_path: Path, edits: dict[int, str]) -> tuple[Path, object]:
    pool = load_pool(str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Q{i}"} for i in range(4)])), labelled=False)
    sheet = export_for_annotation(pool, range(4), tmp_path / "drafts.jsonl", drafts=["d0", "d1", "d2", "d3"])
    rows = [r for _, r in read_rows(str(sheet))[0]]
    for i, text in edits.items():
        rows[i]["response"] = text
    write_jsonl(sheet, rows)
    return sheet, pool


def test_unedited_drafts_are_refused_by_default_with_a_count_and_the_flags(tmp_path):
    sheet, pool = drafted_sheet(tmp_path, {1: "edited"})
    with pytest.raises(DataError, match="3 of 4 rows still hold the model's draft unedited.*--partial.*--accept-drafts"):
        import_annotations(sheet, pool)
    new, report = import_annotations(sheet, pool, require_all=False, partial=True)
    assert [ex.response for ex in new] == ["edited"] and report.skipped_drafts == 3
    new, report = import_annotations(sheet, pool, accept_drafts=True)
    assert [ex.response for ex in new] == ["d0", "edited", "d2", "d3"] and report.unchanged == 3


def test_cli_import_of_an_untouched_drafted_sheet_fails(tmp_path):
    sheet, pool = drafted_sheet(tmp_path, {})
    out = tmp_path / "labelled.jsonl"
    rc, err = run_cli(["annotate", "import", sheet, "--pool", tmp_path / "p.jsonl", "--out", out])
    assert_one_line_error(rc, err)
    assert "--accept-drafts" in err and not out.exists()


# ---------------------------------------------------------------------------- 5. import output, partial, duplicates, languages, folders
def test_import_writes_labelled_rows_that_select_reads(files, tmp_path):
    out = tmp_path / "labelled.jsonl"
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "Name a cat"}, {"prompt": "Done", "response": "yes"},
                                                   {"prompt": "Not exported"}])
    sheet = export_for_annotation(load_pool(str(mixed), labelled=False), [0], tmp_path / "s.jsonl")
    write_jsonl(sheet, [{**r, "response": "Tom"} for _, r in read_rows(str(sheet))[0]])
    assert run_cli(["annotate", "import", sheet, "--pool", mixed, "--out", out])[0] == 0
    assert [ex.response for ex in load_pool(str(out)).examples] == ["Tom", "yes"]
    rc, err = run_cli(["select", out, "--budget", "2", "--out", tmp_path / "chosen.jsonl"], guard=False)
    assert rc == 0, err


def test_partial_takes_blank_cells_as_unlabelled_and_errors_name_flags(files, tmp_path):
    rows = [r for _, r in read_rows(str(files["sheet"]))[0]]
    rows[0]["response"] = ""
    blank = write_jsonl(tmp_path / "blank.jsonl", rows)
    rc, err = run_cli(["annotate", "import", blank, "--pool", files["prompts"], "--out", tmp_path / "a.jsonl"])
    assert_one_line_error(rc, err)
    assert "--partial" in err and "require_all" not in err
    rc, err = run_cli(["annotate", "import", blank, "--pool", files["prompts"], "--out", tmp_path / "b.jsonl",
                       "--partial"])
    assert rc == 0, err
    assert len(load_pool(str(tmp_path / "b.jsonl"))) == 3


def test_export_reports_the_duplicates_it_drops(tmp_path):
    pool = write_jsonl(tmp_path / "dup.jsonl", [{"prompt": "Same"}, {"prompt": "Same"}, {"prompt": "Other"}])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["annotate", "export", str(pool), "--budget", "2", "--out", str(tmp_path / "s.csv")]) == 0
    assert "1 exact duplicate rows dropped (rows 2)" in out.getvalue()


def test_translation_languages_from_the_command_line(tmp_path, caplog):
    pool = write_jsonl(tmp_path / "tr.jsonl", [{"source": f"Hello {i}", "target": f"Bonjour {i}"} for i in range(4)])
    with caplog.at_level("WARNING", logger="llm_al"):
        unnamed = load_pool(str(pool))
    assert "name no source or target language" in caplog.text and "--source-lang" in caplog.text
    assert "the source language" in unnamed.examples[0].messages[0]["content"]
    named = load_pool(str(pool), languages=("English", "fr"))
    assert named.examples[0].messages[0]["content"].startswith("Translate this English text into French:")
    out, todo = tmp_path / "s.jsonl", write_jsonl(tmp_path / "todo.jsonl", [{"source": f"Hi {i}"} for i in range(4)])
    rc, _ = run_cli(["annotate", "export", todo, "--budget", "2", "--out", out, "--source-lang", "English",
                     "--target-lang", "French"], guard=False)
    assert rc == 0 and all("English text into French" in r["prompt"] for _, r in read_rows(str(out))[0])


def test_out_ending_in_a_slash_is_a_datasets_folder(files, tmp_path):
    out = str(tmp_path / "chosen") + "/"
    rc, err = run_cli(["select", files["pool"], "--budget", "2", "--out", out], guard=False)
    assert rc == 0, err
    assert (tmp_path / "chosen" / "dataset_info.json").exists()
    assert len(load_pool(str(tmp_path / "chosen"))) == 2


# ---------------------------------------------------------------------------- the fuzzer
BAD_OUT = ["input", "symlink", "hardlink", "dotdot", "folder", "under_file", "unwritable"]
COMMANDS = ["select", "overlap", "export", "import", "synthesize", "report", "run"]


def out_path(kind: str, scratch: Path, target: Path, n: int) -> Path | str:
    if kind == "input":
        return target
    if kind == "symlink":
        link = scratch / f"link{n}{target.suffix}"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        return link
    if kind == "hardlink":
        link = scratch / f"hard{n}{target.suffix}"
        link.unlink(missing_ok=True)
        os.link(target, link)
        return link
    if kind == "dotdot":
        return scratch / "folder" / ".." / target.name
    if kind == "folder":
        return scratch / "folder"
    if kind == "under_file":
        return target / "x.jsonl"
    return "/proc/llm_al_unwritable/x.jsonl"


@st.composite
def bad_argv(draw, scratch: Path) -> list:
    """One command line with exactly one kind of fault: a bad --out, a bad number or a bad spec."""
    command = draw(st.sampled_from(COMMANDS))
    fault = draw(st.sampled_from(["out", "number", "spec"] if command in ("select", "export", "run") else
                                 ["out", "number"]))
    pool, prompts, sheet = scratch / "pool.jsonl", scratch / "prompts.jsonl", scratch / "sheet.csv"
    good_out = scratch / "fresh" / "out.jsonl"
    target = {"select": pool, "overlap": pool, "export": prompts, "import": draw(st.sampled_from([sheet, prompts])),
              "synthesize": prompts, "report": scratch / "results" / "runs" / "a.json", "run": pool}[command]
    kinds = [k for k in BAD_OUT if not (command in ("run", "report") and k == "folder")      # a folder is right there
             and not (command == "report" and k == "dotdot")]
    out = out_path(draw(st.sampled_from(kinds)), scratch, target, draw(st.integers(0, 3))) if fault == "out" \
        else good_out
    number = draw(st.sampled_from([-1, 0, -(10 ** 12), 10 ** 12])) if fault == "number" else 2
    spec = draw(st.sampled_from(BAD_SPECS + ["nonexistent", "kcenter:devce=cpu", "weighted:weights={loss: 0}"])) \
        if fault == "spec" else "random"
    if command == "select":
        return ["select", pool, "--strategy", spec, "--budget", number, "--out", out]
    if command == "export":
        return ["annotate", "export", prompts, "--strategy", spec, "--budget", number, "--out", out]
    if command == "import":
        if fault == "number":
            return ["annotate", "import", sheet, "--pool", prompts, "--out", out, "--field", "prompt"]
        return ["annotate", "import", sheet, "--pool", prompts, "--out", out]
    if command == "overlap":
        return ["overlap", pool, "--no-similarity", "--n", number if fault == "number" and number < 1 else 8,
                "--out", out] + (["--passage-words", -number] if fault == "number" and number > 1 else [])
    if command == "synthesize":
        bad_n = number if fault == "number" and number < 1 else 2
        return ["annotate", "synthesize", prompts, "--n", bad_n, "--out", out] + \
            (["--max-rounds", -number] if fault == "number" and number > 1 else [])
    if command == "report":
        if fault == "number":
            return ["report", scratch / "no-results-here"]
        return ["report", scratch / "results", "--out", out if fault == "out" else target]
    run_out = out if fault == "out" else good_out.parent
    budget = number if fault == "number" else 2
    return ["run", ROOT / "recipes" / "tiny_smoke.yaml", f"data.pool={pool}", f"strategies=[{spec}]",
            f"budget={budget}", f"out_dir={run_out}", "--dry-run"]


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        write_jsonl(root / "pool.jsonl", [{"prompt": f"Say {w}", "response": w} for w in ("one", "two", "three")])
        prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": f"Name {w}"} for w in ("x", "y", "z")])
        sheet = export_for_annotation(load_pool(str(prompts), labelled=False), [0, 1, 2], root / "sheet.csv")
        write_jsonl(root / "sheet.jsonl", [r for _, r in read_rows(str(sheet))[0]])
        (root / "folder").mkdir()
        (root / "results" / "runs").mkdir(parents=True)
        (root / "results" / "runs" / "a.json").write_text("{}")
        yield root


FUZZ = settings(max_examples=CLI_FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
SEEN: dict[str, int] = {}


@FUZZ
@given(data=st.data())
def test_fuzz_bad_arguments_exit_2_in_one_line_and_change_no_input(scratch, data):
    argv = data.draw(bad_argv(scratch))
    inputs = [p for p in scratch.rglob("*") if p.is_file() and not p.is_symlink()]
    before = {p: digest(p) for p in inputs}
    rc, err = run_cli(argv)
    assert_one_line_error(rc, err)
    assert {p: digest(p) for p in inputs} == before, argv
    assert not (scratch / "fresh").exists(), argv
    name = argv[1] if argv[0] == "annotate" else argv[0]
    SEEN[name] = SEEN.get(name, 0) + 1


def test_fuzzer_reached_every_command():
    if not SEEN:
        pytest.skip("run with the fuzz test above")
    assert {"select", "overlap", "export", "import", "synthesize", "report", "run"} <= set(SEEN), SEEN


def test_the_python_api_refuses_an_out_dir_that_is_an_input(files, tmp_path):
    from llm_al import api
    from llm_al.errors import UserError

    before = digest(files["pool"])
    with no_model_work(), pytest.raises(UserError, match="is the input"):
        api.run(None, **{"data.pool": str(files["pool"]), "out_dir": str(files["pool"])})
    with pytest.raises(UserError, match="is an existing file"):
        api.report(tmp_path, out=files["pool"])
    assert digest(files["pool"]) == before
