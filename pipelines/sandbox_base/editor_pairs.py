"""Preference pairs of the editor's own edits, labelled by the sandbox oracle (the sandbox's "annotator").

Edit-R1's GCPO data are human preferences between edits that real editors made. The sandbox's stock pairs
(`build_sandbox`) compare rendered *candidates* of known grade, which is not what the RRM later scores when it
rewards Flow-GRPO: the tiny editor's SDE samples are soft, half-done and off-grid in ways the candidates are not.
`build_editor_pairs` samples K edits per prompt exactly as a GRPO group does (the GRPO config's editor, LoRA,
sampler and noise), lets the oracle score every edit, and writes pairs of edits of the same prompt whose oracle
scores differ by at least `min_gap` (smaller gaps count as ties and are skipped), a fraction `label_noise` of
labels flipped - in the stock pairs schema (`grade_a` = `grade_b` = "editor"), optionally followed by the first
`mix_size` rows of another pairs dataset (`mix_with`), so that GCPO sees both kinds.

With `traces_out` it also writes the oracle's trace of every sampled edit (traces schema, `grade` "editor", the
side-by-side comparison line on), optionally followed by another traces dataset (`traces_mix_with`): RRM SFT data
on the distribution the RRM will reward.

    edit-rlhf sandbox editor-pairs OUT [key=value ...]        (EditorPairsConfig below)
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

EDITOR_GRADE = "editor"


@dataclass
class EditorPairsConfig:
    editor_config: str = "configs/sandbox_tiny.yaml"  # the GRPO config whose editor, lora and sampling are used
    lora: Optional[str] = None                # a trained LoRA folder to sample from (None: the base editor)
    prompts: str = ".cache/sandbox_big/prompts_train"   # a sandbox prompts dataset (with its oracle column)
    start: int = 512                          # first prompt row (the default GRPO data uses rows 0-511)
    n_prompts: int = 1024
    samples: int = 4                          # SDE edits per prompt (one group, the GRPO sampler)
    pairs_per_prompt: int = 2                 # at most this many untied pairs per prompt
    min_gap: float = 0.5                      # oracle score gap below which two edits are a tie (skipped)
    label_noise: float = 0.1                  # flipped labels, as in the stock sandbox pairs
    seed: int = 0
    mix_with: Optional[str] = None            # another pairs dataset appended after the editor pairs
    mix_size: int = 0                         # its first rows taken (0: all)
    traces_out: Optional[str] = None          # also write the oracle's (comparing) trace of every sampled edit here
    traces_mix_with: Optional[str] = None     # another traces dataset appended after them (e.g. the SFT set)
    traces_mix_size: int = 0                  # its first rows taken (0: all)

    def __post_init__(self) -> None:
        for name, lo in (("start", 0), ("n_prompts", 1), ("samples", 2), ("pairs_per_prompt", 1), ("seed", 0),
                         ("mix_size", 0), ("traces_mix_size", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"EditorPairsConfig.{name} must be an int >= {lo}, got {v!r}")
        if not 0.0 <= float(self.label_noise) <= 0.5:
            raise ValueError(f"EditorPairsConfig.label_noise must be in [0, 0.5], got {self.label_noise!r}")
        if float(self.min_gap) < 0:
            raise ValueError(f"EditorPairsConfig.min_gap must be >= 0, got {self.min_gap!r}")


def select_pairs(scores: Sequence[float], rng: np.random.Generator, k: int, min_gap: float
                 ) -> Tuple[List[Tuple[int, int]], int]:
    """Up to `k` index pairs (i, j), i < j, of one prompt's edits whose scores differ by >= `min_gap`, drawn in a
    seeded random order. Returns (pairs, ties skipped among all pairs)."""
    n = len(scores)
    combos = [(i, j) for i in range(n) for j in range(i + 1, n)]
    untied = [c for c in combos if abs(float(scores[c[0]]) - float(scores[c[1]])) >= min_gap]
    order = rng.permutation(len(untied)) if untied else []
    return [untied[int(o)] for o in order[:k]], len(combos) - len(untied)


def pair_row(pid: str, n: int, src_png: bytes, instruction: str, principles: list, png_a: bytes, png_b: bytes,
             score_a: float, score_b: float, flip: bool) -> Dict[str, Any]:
    """One row of the pairs schema; the higher oracle score is preferred unless `flip`."""
    preferred = "a" if score_a > score_b else "b"
    if flip:
        preferred = "b" if preferred == "a" else "a"
    from edit_rlhf.sandbox.build import _image

    return {"id": f"editor-pair-{n:06d}", "prompt_id": pid, "source_image": _image(src_png), "instruction": instruction,
            "principles": principles, "image_a": _image(png_a), "image_b": _image(png_b), "preferred": preferred,
            "score_a": float(score_a), "score_b": float(score_b), "grade_a": EDITOR_GRADE, "grade_b": EDITOR_GRADE,
            "label_flipped": bool(flip)}


def _append(base, path: Optional[str], size: int, feats, what: str, schema: str):
    """`base` followed by the first `size` rows (0: all) of the dataset at `path`, in `feats`' columns."""
    import datasets as ds

    from edit_rlhf.data.prompts import load_hf_dataset

    if not path:
        return base, 0
    other = load_hf_dataset(path)
    missing = [c for c in feats if c not in other.column_names]
    if missing:
        raise ValueError(f"{what}={path}: missing column(s) {missing} of the {schema} schema")
    other = other.select_columns(list(feats))
    if size:
        other = other.select(range(min(size, len(other))))
    return ds.concatenate_datasets([base, other.cast(feats)]), len(other)


def scored_edits(prompts: str, editor_config: str, lora: Optional[str], start: int, n_prompts: int, samples: int,
                 seed: int, stats: Dict[str, int]) -> Iterator[Dict[str, Any]]:
    """Per prompt row `start` .. `start + n_prompts - 1` of `prompts`: `samples` SDE edits sampled as one GRPO group
    of `editor_config`'s editor (with `lora`), each verified once by the oracle. Yields {'row', 'images',
    'results' (an OracleResult per edit, None where the oracle failed: counted in `stats['oracle_failed']` and
    logged), 'scene' and 'principles' (the oracle record's)}. Edit k of row i is seeded by seed * 1000003 + i * samples + k."""
    from edit_rlhf.config import GRPOConfig, load_config
    from edit_rlhf.data.prompts import EditPromptDataset
    from edit_rlhf.grpo.rollout import EditorRollout
    from edit_rlhf.sandbox.oracle import parse_oracle_record, verify

    data = EditPromptDataset(prompts, require=("oracle", "principles"), validate="schema")
    if start + n_prompts > len(data):
        raise ValueError(f"{prompts} has {len(data)} rows; start={start} + n_prompts={n_prompts} is more")
    gcfg = load_config(GRPOConfig, editor_config, [f"data.train={prompts}", "data.eval=null"])
    roll = EditorRollout(gcfg, {"train": prompts})
    if lora:
        roll.use_lora_dir(lora)
    stats.setdefault("oracle_failed", 0)
    for i in range(start, start + n_prompts):
        row = data.row(i, ["id", "source_image", "instruction", "principles", "oracle"])
        _, images, _ = roll.rollout("train", i, [int(seed) * 1_000_003 + i * samples + k for k in range(samples)])
        try:
            scene, edit, prs = parse_oracle_record(row["oracle"])
        except (ValueError, KeyError, TypeError) as e:
            scene, prs, why = None, None, e
        results = []
        for img in images:
            try:
                if scene is None:
                    raise ValueError(f"bad oracle record: {why}")
                results.append(verify(scene, edit, prs, img))
            except (ValueError, KeyError, TypeError) as e:  # counted, never silent
                stats["oracle_failed"] += 1
                log.warning("oracle failed on %s: %s", row["id"], e)
                results.append(None)
        yield {"row": row, "images": images, "results": results, "scene": scene, "principles": prs}


def build_editor_pairs(out: str, cfg: EditorPairsConfig, quiet: bool = False) -> Dict[str, Any]:
    """Sample, score and pair (module docstring); writes `out` (a save_to_disk folder, with the manifest as
    `out/editor_pairs.json`). Returns the manifest."""
    import datasets as ds

    from edit_rlhf.sandbox.build import _features, _image, png_bytes
    from edit_rlhf.sandbox.traces import oracle_trace

    t0 = time.time()
    for path in (out, cfg.traces_out):
        if path and os.path.exists(path):
            raise ValueError(f"{path} already exists; remove it or pick another folder")
    rng = np.random.default_rng([cfg.seed, 7])
    rows: List[Dict[str, Any]] = []
    trace_rows: List[Dict[str, Any]] = []
    stats = {"prompts": 0, "edits": 0, "ties_skipped": 0, "prompts_without_pair": 0, "flipped": 0,
             "oracle_failed": 0}
    all_scores, group_std = [], []
    for g in scored_edits(cfg.prompts, cfg.editor_config, cfg.lora, cfg.start, cfg.n_prompts, cfg.samples, cfg.seed,
                          stats):
        row, images = g["row"], g["images"]
        src_png = png_bytes(row["source_image"])
        pngs = [png_bytes(img) for img in images]
        scores = [float("nan") if res is None else float(res.score) for res in g["results"]]
        if cfg.traces_out:
            for j, res in enumerate(g["results"]):
                if res is None:
                    continue
                trace_rows.append({
                    "id": f"{row['id']}-e{j}-trace", "prompt_id": row["id"], "source_image": _image(src_png),
                    "instruction": row["instruction"], "principles": row["principles"],
                    "edited_image": _image(pngs[j]), "grade": EDITOR_GRADE,
                    "trace_text": oracle_trace(g["scene"], None, g["principles"], res, compare=True),
                    "checks": [int(c) for c in res.checks], "oracle_score": float(res.score)})
        ok = [j for j, s in enumerate(scores) if np.isfinite(s)]
        stats["prompts"] += 1
        stats["edits"] += len(images)
        all_scores += [scores[j] for j in ok]
        if len(ok) > 1:
            group_std.append(float(np.std([scores[j] for j in ok])))
        chosen, ties = select_pairs([scores[j] for j in ok], rng, cfg.pairs_per_prompt, float(cfg.min_gap))
        stats["ties_skipped"] += ties
        if not chosen:
            stats["prompts_without_pair"] += 1
        for a, b in chosen:
            a, b = ok[a], ok[b]
            if rng.random() < 0.5:  # random sides
                a, b = b, a
            flip = bool(rng.random() < cfg.label_noise)
            stats["flipped"] += int(flip)
            rows.append(pair_row(row["id"], len(rows), src_png, row["instruction"], row["principles"], pngs[a],
                                 pngs[b], scores[a], scores[b], flip))
        if not quiet and stats["prompts"] % 64 == 0:
            print(f"editor-pairs: {stats['prompts']}/{cfg.n_prompts} prompts, {len(rows)} pairs, "
                  f"{time.time() - t0:.0f}s", flush=True)
    if not rows:
        raise ValueError(f"no untied pairs among {stats['edits']} edits (min_gap={cfg.min_gap}); lower min_gap")
    feats = _features("pairs")
    out_ds = ds.Dataset.from_dict({k: [r[k] for r in rows] for k in feats}, features=feats)
    out_ds, mixed = _append(out_ds, cfg.mix_with, cfg.mix_size, feats, "mix_with", "pairs")
    out_ds.save_to_disk(out)
    trace_counts = {}
    if cfg.traces_out:
        tf = _features("traces")
        tr_ds = ds.Dataset.from_dict({k: [r[k] for r in trace_rows] for k in tf}, features=tf)
        tr_ds, tmixed = _append(tr_ds, cfg.traces_mix_with, cfg.traces_mix_size, tf, "traces_mix_with",
                                 "traces")
        tr_ds.save_to_disk(cfg.traces_out)
        trace_counts = {"traces": len(trace_rows), "traces_mixed_rows": tmixed, "traces_out": cfg.traces_out}
    sc = np.asarray(all_scores, dtype=float)
    manifest = {"config": asdict(cfg), "pairs": len(rows), "mixed_rows": mixed, "rows": len(out_ds), **stats,
                **trace_counts,
                "oracle_mean": round(float(sc.mean()), 4) if sc.size else None,
                "oracle_std": round(float(sc.std()), 4) if sc.size else None,
                "group_std_mean": round(float(np.mean(group_std)), 4) if group_std else None,
                "gap_mean": round(float(np.mean([abs(r["score_a"] - r["score_b"]) for r in rows])), 4) if rows else None,
                "seconds": round(time.time() - t0, 1)}
    with open(os.path.join(out, "editor_pairs.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest
