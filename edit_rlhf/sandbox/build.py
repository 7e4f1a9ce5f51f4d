"""Build the sandbox datasets (HuggingFace ``datasets``, images as PNG ``datasets.Image()``).

``build_sandbox(out_dir, cfg)`` writes under ``out_dir``:

  prompts_train, prompts_eval   id, source_image, instruction, principles[{question, category}],
                                target_image, edit_type, oracle (JSON, see oracle.oracle_record)
  candidates                    id, prompt_id, split, edited_image, grade, checks, oracle_score
  pairs_train, pairs_eval       id, prompt_id, source_image, instruction, principles, image_a, image_b,
                                preferred ("a"/"b"), score_a, score_b, grade_a, grade_b, label_flipped
  traces_train, traces_eval     id, prompt_id, source_image, instruction, principles, edited_image, grade,
                                trace_text, checks, oracle_score
  manifest.json                 config, counts, ties dropped, flipped labels, version, wall time

Every random choice comes from ``np.random.default_rng([seed, split, stream, index])``, so the same
seed gives identical datasets, and a prompt does not change when ``n_train`` grows.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from .candidates import GRADES, feasible_grades, make_candidate
from .config import SandboxConfig
from .edits import apply_edit, instruction_text, principles as make_principles, public_principles, sample_edit
from .oracle import oracle_record, verify
from .scene import render, sample_scene
from .traces import oracle_trace

log = logging.getLogger(__name__)

DATASET_NAMES = ("prompts_train", "prompts_eval", "candidates", "pairs_train", "pairs_eval", "traces_train", "traces_eval")
SPLIT_IDS = {"train": 1, "eval": 2}
STREAM_PROMPT, STREAM_CANDIDATES, STREAM_PAIRS = 0, 1, 2
TIE_MARGIN = 0.05   # |score_a - score_b| below this is a tie ("same"): equal at the trace's 1-decimal precision
MAX_SCENE_TRIES = 100


def package_version() -> str:
    try:
        from importlib.metadata import version
        return version("edit_rlhf")
    except Exception:  # not installed (running from a checkout)
        import edit_rlhf
        return str(getattr(edit_rlhf, "__version__", "unknown"))


def png_bytes(img: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes (lossless, deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _image(b: bytes) -> dict:
    return {"bytes": b, "path": None}


def _features(kind: str):
    import datasets as ds

    img, s, f, i = ds.Image(), ds.Value("string"), ds.Value("float64"), ds.Value("int32")
    pr = ds.List({"question": s, "category": s})
    cols = {
        "prompts": {"id": s, "source_image": img, "instruction": s, "principles": pr, "target_image": img,
                    "edit_type": s, "oracle": s},
        "candidates": {"id": s, "prompt_id": s, "split": s, "edited_image": img, "grade": s,
                       "checks": ds.List(i), "oracle_score": f},
        "pairs": {"id": s, "prompt_id": s, "source_image": img, "instruction": s, "principles": pr,
                  "image_a": img, "image_b": img, "preferred": s, "score_a": f, "score_b": f,
                  "grade_a": s, "grade_b": s, "label_flipped": ds.Value("bool")},
        "traces": {"id": s, "prompt_id": s, "source_image": img, "instruction": s, "principles": pr,
                   "edited_image": img, "grade": s, "trace_text": s, "checks": ds.List(i), "oracle_score": f},
    }[kind]
    return ds.Features(cols)


def make_prompt(cfg: SandboxConfig, split: str, index: int) -> dict:
    """One edit prompt (in memory, with its scene/edit objects and rendered images)."""
    rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], STREAM_PROMPT, index])
    etype = cfg.edit_types[index % len(cfg.edit_types)]   # balanced edit types
    for _ in range(MAX_SCENE_TRIES):
        scene = sample_scene(rng, cfg.size)
        try:
            edit = sample_edit(rng, scene, [etype])
            break
        except ValueError:  # e.g. "add" into a scene with all three kinds: draw another scene
            continue
    else:
        raise RuntimeError(f"no scene admitting a {etype!r} edit in {MAX_SCENE_TRIES} tries")
    prs = make_principles(scene, edit)
    return {"id": f"{split}-{index:06d}", "split": split, "index": index, "scene": scene, "edit": edit,
            "instruction": instruction_text(scene, edit, rng), "principles": prs,
            "source_png": png_bytes(render(scene)), "target_png": png_bytes(render(apply_edit(scene, edit)))}


def make_candidates(cfg: SandboxConfig, prompt: dict) -> list[dict]:
    """``cfg.candidates_per_prompt`` graded candidates (distinct grades while they last), each
    verified by the oracle and given an oracle trace."""
    rng = np.random.default_rng([cfg.seed, SPLIT_IDS[prompt["split"]], STREAM_CANDIDATES, prompt["index"]])
    scene, edit, prs = prompt["scene"], prompt["edit"], prompt["principles"]
    feas = feasible_grades(scene, edit)
    k = cfg.candidates_per_prompt
    grades = [feas[int(j)] for j in rng.permutation(len(feas))[:k]]
    while len(grades) < k:  # more candidates than grades: repeat grades (new random variants)
        grades.append(feas[int(rng.integers(len(feas)))])
    out = []
    for c, g in enumerate(grades):
        img = make_candidate(rng, scene, edit, g)
        res = verify(scene, edit, prs, img)
        out.append({"id": f"{prompt['id']}-c{c}", "prompt_id": prompt["id"], "split": prompt["split"],
                    "png": png_bytes(img), "grade": g, "checks": res.checks, "score": res.score,
                    "trace": oracle_trace(scene, None, prs, res, compare=cfg.trace_compare)})
    return out


def make_pairs(cfg: SandboxConfig, split: str, prompts: list[dict], cands: dict[str, list[dict]], n: int) -> tuple[list[dict], int, int]:
    """``n`` preference pairs of candidates of the same prompt, visited in a seeded random order;
    oracle ties (|diff| < TIE_MARGIN) are skipped and counted. Returns (pairs, ties, flipped)."""
    rng = np.random.default_rng([cfg.seed, SPLIT_IDS[split], STREAM_PAIRS])
    combos = [(pi, a, b) for pi, p in enumerate(prompts) for a in range(len(cands[p["id"]]))
              for b in range(a + 1, len(cands[p["id"]]))]
    pairs, ties, flipped = [], 0, 0
    for j in rng.permutation(len(combos)):
        if len(pairs) == n:
            break
        pi, a, b = combos[int(j)]
        p = prompts[pi]
        ca, cb = cands[p["id"]][a], cands[p["id"]][b]
        if rng.random() < 0.5:   # random sides, so "a" is not always the earlier candidate
            ca, cb = cb, ca
        if abs(ca["score"] - cb["score"]) < TIE_MARGIN:
            ties += 1
            continue
        preferred = "a" if ca["score"] > cb["score"] else "b"
        flip = bool(rng.random() < cfg.label_noise)
        if flip:
            preferred = "b" if preferred == "a" else "a"
            flipped += 1
        pairs.append({"id": f"{split}-pair-{len(pairs):06d}", "prompt_id": p["id"],
                      "source_image": _image(p["source_png"]), "instruction": p["instruction"],
                      "principles": public_principles(p["principles"]), "image_a": _image(ca["png"]),
                      "image_b": _image(cb["png"]), "preferred": preferred, "score_a": ca["score"],
                      "score_b": cb["score"], "grade_a": ca["grade"], "grade_b": cb["grade"], "label_flipped": flip})
    if len(pairs) < n:
        raise ValueError(f"n_pairs_{split}={n} is more than the {len(pairs)} untied candidate pairs that "
                         f"{len(prompts)} {split} prompts give; raise n_{split} or candidates_per_prompt")
    return pairs, ties, flipped


def _save(rows: list[dict], kind: str, path: Path) -> None:
    import datasets as ds

    feats = _features(kind)
    cols = {name: [r[name] for r in rows] for name in feats}
    ds.Dataset.from_dict(cols, features=feats).save_to_disk(str(path))


def build_sandbox(out_dir: str | Path, cfg: SandboxConfig | None = None, overwrite: bool = False) -> dict:
    """Build all sandbox datasets under ``out_dir`` (see module docstring); returns the manifest dict.
    Existing dataset folders there raise ValueError unless ``overwrite``."""
    import datasets as ds

    cfg = cfg or SandboxConfig()
    t0 = time.perf_counter()
    out = Path(out_dir)
    existing = [n for n in (*DATASET_NAMES, "manifest.json") if (out / n).exists()]
    if existing and not overwrite:
        raise ValueError(f"out_dir {str(out)!r} already holds {existing}; pass overwrite=True to replace them")
    out.mkdir(parents=True, exist_ok=True)
    for n in existing:
        shutil.rmtree(out / n) if (out / n).is_dir() else (out / n).unlink()

    prompts = {sp: [make_prompt(cfg, sp, i) for i in range(getattr(cfg, f"n_{sp}"))] for sp in ("train", "eval")}
    cands = {p["id"]: make_candidates(cfg, p) for sp in prompts for p in prompts[sp]}

    rows: dict[str, list[dict]] = {}
    manifest: dict = {"config": cfg.to_dict(), "version": package_version(), "counts": {}, "ties_dropped": {},
                      "flipped_labels": {}, "edit_types": {}, "grades": {}, "oracle_mean_score_by_grade": {}}
    for sp, ps in prompts.items():
        rows[f"prompts_{sp}"] = [
            {"id": p["id"], "source_image": _image(p["source_png"]), "instruction": p["instruction"],
             "principles": public_principles(p["principles"]), "target_image": _image(p["target_png"]),
             "edit_type": p["edit"].type, "oracle": oracle_record(p["scene"], p["edit"], p["principles"])}
            for p in ps]
        rows[f"traces_{sp}"] = [
            {"id": f"{c['id']}-trace", "prompt_id": p["id"], "source_image": _image(p["source_png"]),
             "instruction": p["instruction"], "principles": public_principles(p["principles"]),
             "edited_image": _image(c["png"]), "grade": c["grade"], "trace_text": c["trace"],
             "checks": c["checks"], "oracle_score": c["score"]}
            for p in ps for c in cands[p["id"]]]
        pairs, ties, flipped = make_pairs(cfg, sp, ps, cands, getattr(cfg, f"n_pairs_{sp}"))
        rows[f"pairs_{sp}"] = pairs
        manifest["ties_dropped"][sp] = ties
        manifest["flipped_labels"][sp] = flipped
        manifest["edit_types"][sp] = dict(sorted(Counter(p["edit"].type for p in ps).items()))
    all_c = [c for sp in prompts for p in prompts[sp] for c in cands[p["id"]]]
    rows["candidates"] = [{"id": c["id"], "prompt_id": c["prompt_id"], "split": c["split"],
                           "edited_image": _image(c["png"]), "grade": c["grade"], "checks": c["checks"],
                           "oracle_score": c["score"]} for c in all_c]
    manifest["grades"] = {g: n for g, n in Counter(c["grade"] for c in all_c).most_common()}
    manifest["oracle_mean_score_by_grade"] = {
        g: round(float(np.mean([c["score"] for c in all_c if c["grade"] == g])), 3)
        for g in GRADES if any(c["grade"] == g for c in all_c)}

    bars = ds.is_progress_bar_enabled()
    ds.disable_progress_bars()
    try:
        for name in DATASET_NAMES:
            _save(rows[name], name.split("_")[0], out / name)
            manifest["counts"][name] = len(rows[name])
    finally:
        if bars:
            ds.enable_progress_bars()
    manifest["wall_time_s"] = round(time.perf_counter() - t0, 2)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    log.info("sandbox: %s in %.1fs -> %s", manifest["counts"], manifest["wall_time_s"], out)
    return manifest
