"""Principle decomposition: answer validation, retries and reporting, the sandbox oracle generator through the
CLI, and a VLM generator on vLLM workers (Ray actors)."""
import json
import os

import pytest

from edit_rlhf.rrm.principles import PrincipleRules, load_examples, parse_principles, validate_principles

PAPER = PrincipleRules()  # 8-11 points: 3-4 follow, 3-4 keep, 2-3 quality


def answer(f=3, k=4, q=3, cat_names=("follow", "keep", "quality")):
    items = [{"question": f"Is follow point {i} met?", "category": cat_names[0]} for i in range(f)]
    items += [{"question": f"Is keep point {i} kept?", "category": cat_names[1]} for i in range(k)]
    items += [{"question": f"Is quality point {i} fine?", "category": cat_names[2]} for i in range(q)]
    return json.dumps(items)


@pytest.mark.parametrize("text,error", [
    (answer(), ""),
    ("Here are the points:\n" + answer(4, 3, 2) + "\nDone.", ""),
    (answer(cat_names=("Instruction Following", "Feature Preservation", "Image Quality")), ""),
    (answer().replace('"', "'"), ""),
    (answer(2, 4, 3), "2 'follow' principles, expected 3-4"),
    (answer(3, 4, 1), "1 'quality' principles, expected 2-3"),
    (answer(4, 4, 4), "12 principles, expected 8-11"),
    (answer(cat_names=("follow", "keep", "style")), "unknown principle category"),
    (answer().replace("Is keep point 1 kept?", "Is keep point 0 kept?"), "repeats the question"),
    ('[{"question": "", "category": "follow"}]', "has no question"),
    ("[1, 2, 3]", "no JSON list of principles"),
    (answer()[:120], "not closed"),
    ("I cannot help with that.", "no JSON list of principles"),
    ("", "empty answer"),
    (None, "empty answer"),
])
def test_parse_and_validate_answers(text, error):
    got, why = parse_principles(text, PAPER)
    if error:
        assert got is None and error in why, why
    else:
        assert why == "" and len(got) >= 8 and {p["category"] for p in got} == {"follow", "keep", "quality"}


def test_builtin_examples_meet_the_paper_rules_and_prompt_renders(tiny_models):
    from transformers import AutoProcessor

    from edit_rlhf.rrm.principles import build_messages, pick_examples
    from edit_rlhf.rrm.prompt import render

    pool = load_examples()
    assert len(pool) >= 6
    loose = PrincipleRules(min_count=8, max_count=10, follow=(3, 4), keep=(3, 4), quality=(2, 3))
    for e in pool:
        ok, why = validate_principles(e["principles"], loose)
        assert ok is not None, (e["instruction"], why)
    ex = pick_examples(pool, 2, seed=1)
    assert ex == pick_examples(pool, 2, seed=1) and len(ex) == 2
    text = render(AutoProcessor.from_pretrained(tiny_models["rrm"]), build_messages("make the square red", PAPER, ex))
    assert text.count("<|image_pad|>") == 1 and "make the square red" in text and ex[0]["instruction"] in text


def test_retries_are_bounded_and_invalid_rows_reported():
    from edit_rlhf.pipelines.principles import RowResult, ask_with_retries

    good = answer()
    script = {0: [good], 1: ["nonsense", good], 2: ["nonsense", "still bad", "no"], 3: [answer(1, 1, 1)] * 3}
    asked = []

    def ask(todo, attempt):
        asked.append((list(todo), attempt))
        return [script[i][attempt] for i in todo]

    res = ask_with_retries([RowResult() for _ in range(4)], ask, PAPER, max_attempts=3)
    assert asked == [([0, 1, 2, 3], 0), ([1, 2, 3], 1), ([2, 3], 2)]
    assert [r.attempts for r in res] == [1, 2, 3, 3]
    assert res[0].principles and res[1].principles and res[2].principles is None and res[3].principles is None
    assert "no JSON list" in res[2].error and "principles, expected" in res[3].error and res[2].answer == "no"


def test_oracle_generator_through_the_cli(sandbox_dir, tmp_path, capsys):
    from edit_rlhf.cli import main
    from edit_rlhf.data.prompts import EditPromptDataset

    from conftest import ROOT

    cfg = os.path.join(ROOT, "configs", "principles_sandbox.yaml")
    out = tmp_path / "with_principles"
    assert main(["principles", "--config", cfg, f"input={sandbox_dir}/prompts_eval", f"output={out}"]) == 0
    line = capsys.readouterr().out
    assert "principles: 16 rows, 16 valid" in line
    src, new = EditPromptDataset(f"{sandbox_dir}/prompts_eval"), EditPromptDataset(str(out), validate="full")
    assert len(new) == 16 and new.ids == src.ids
    for i in range(16):  # the oracle's generator reproduces the principles the sandbox build wrote
        assert new.row(i, ["principles"])["principles"] == src.row(i, ["principles"])["principles"]
    rep = json.loads((out / "principles_report.json").read_text())
    assert rep["valid"] == 16 and rep["invalid"] == 0 and rep["principles_per_row"]["min"] >= 5

    # the paper's rules (10 points) reject every sandbox decomposition (5-7 points): counted, listed, dropped
    assert main(["principles", "--config", cfg, f"input={sandbox_dir}/prompts_eval", f"output={out}",
                 "overwrite=true", "rules.min_count=8", "rules.max_count=11"]) == 0
    rep = json.loads((out / "principles_report.json").read_text())
    assert rep["valid"] == 0 and rep["invalid"] == 16 and len(rep["invalid_rows"]) == 16
    assert "principles, expected 8-11" in rep["invalid_rows"][0]["error"]
    # on_invalid=fail stops with the rows named; an existing output needs overwrite
    assert main(["principles", "--config", cfg, f"input={sandbox_dir}/prompts_eval", f"output={out}",
                 "overwrite=true", "rules.min_count=8", "on_invalid=fail"]) == 2
    err = capsys.readouterr().err
    assert "16 row(s) without valid principles" in err and "row 0 (id=eval-000000)" in err
    assert main(["principles", "--config", cfg, f"input={sandbox_dir}/prompts_eval", f"output={out}"]) == 2
    assert "overwrite=true" in capsys.readouterr().err
    assert main(["principles", "--config", cfg, f"input={sandbox_dir}/prompts_eval", f"output={out}",
                 "generator=vlm", "vlm.path=null"]) == 2
    assert "vlm.path" in capsys.readouterr().err


@pytest.mark.integration
def test_vlm_generator_on_vllm_workers(ray_cluster, tiny_models, sandbox_dir, tmp_path):
    """A VLM on a vLLM worker (Ray actor) answers every row; the random tiny VLM's answers are never valid
    JSON, so each row is asked max_attempts times and then reported."""
    from edit_rlhf.config import load_config
    from edit_rlhf.config.principles import PrinciplesConfig
    from edit_rlhf.pipelines.principles import run_principles

    from conftest import ROOT

    cfg = load_config(PrinciplesConfig, os.path.join(ROOT, "configs", "principles_sandbox.yaml"), [
        f"input={sandbox_dir}/prompts_eval", f"output={tmp_path}/out", "generator=vlm",
        f"vlm.path={tiny_models['rrm']}", "vlm.backend=vllm", "limit=3", "max_attempts=2",
        "sampling.max_tokens=24", "batch_size=2"])
    rep = run_principles(cfg, quiet=True)
    assert rep["rows"] == 3 and rep["valid"] == 0 and rep["invalid"] == 3 and rep["answers"] == 6
    assert [r["attempts"] for r in rep["invalid_rows"]] == [2, 2, 2]
    assert all(r["error"] and isinstance(r["answer"], str) for r in rep["invalid_rows"])
