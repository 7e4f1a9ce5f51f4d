"""What do the sandbox VLMs' vision towers see? Linear probes of each checkpoint's visual tokens (the tokens its
language model receives) for every attribute an RRM has to check: per shape kind its presence and its colour,
the background, and the image defect (none / blur / noise / cast). Each probe's held-out accuracy stands beside
its majority-class rate. Minutes per checkpoint, so a perception change can be judged before a two-hour RRM
regeneration.

    .venv/bin/python benchmarks/vision_probe.py [--n-train 2000] [--n-eval 1000] [--out FILE] [--note TEXT] \\
        vlm=models/sandbox/vlm rrm=models/sandbox/rrm_sft ...

`--editor-edits` probes the sandbox editor's own SDE edits instead (what the RRM judges when it rewards Flow-GRPO;
labels: what the oracle sees in them), `--with-source` with the source's tokens beside the edit's.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/common.py

DEFECTS = ("none", "blur", "noise", "cast")


def probe_set(n: int, seed: int, size: int = 64):
    """`n` sandbox scenes, each rendered and with probability 1/2 degraded (blur / noise / cast), and their labels:
    {attribute: [label per image]} - `<kind>_present` (bool), `<kind>_color` (None where the kind is absent:
    probed over the images that have it), `background`, `defect`."""
    from edit_rlhf.sandbox.candidates import degrade
    from edit_rlhf.sandbox.scene import SHAPE_KINDS, render, sample_scene

    rng = np.random.default_rng(seed)
    images: List[np.ndarray] = []
    labels: Dict[str, List[Any]] = {"background": [], "defect": []}
    for k in SHAPE_KINDS:
        labels[f"{k}_present"], labels[f"{k}_color"] = [], []
    for _ in range(n):
        s = sample_scene(rng, size)
        img = render(s)
        defect = "none" if rng.random() < 0.5 else DEFECTS[1 + int(rng.integers(3))]
        images.append(img if defect == "none" else degrade(rng, img, defect))
        colors = {sh.kind: sh.color for sh in s.shapes}
        for k in SHAPE_KINDS:
            labels[f"{k}_present"].append(k in colors)
            labels[f"{k}_color"].append(colors.get(k))
        labels["background"].append(s.background)
        labels["defect"].append(defect)
    return images, labels


def editor_probe_set(train_prompts: str, eval_prompts: str, n_train_prompts: int, n_eval_prompts: int,
                     samples: int = 8, train_start: int = 512):
    """The sandbox editor's own SDE edits (a GRPO group of `configs/sandbox_tiny.yaml`'s editor per prompt; training
    prompts from row `train_start` of `train_prompts` (the default GRPO data uses rows 0-511), held-out ones from row 0 of `eval_prompts`) -> (edits, their sources,
    labels, n_train): labels are what the oracle sees in each edit (`sandbox vision`'s attribute columns) -
    `<kind>_present`, `<kind>_color`, `<kind>_place` (None where the kind is not seen), `background`, `defect`."""
    from edit_rlhf.config.sft import VisionWarmupConfig
    from edit_rlhf.pipelines.sandbox_base.vision import attribute_targets, editor_pool
    from edit_rlhf.sandbox.scene import SHAPE_KINDS

    cfg = VisionWarmupConfig(editor_samples=samples)
    tr = editor_pool(cfg, train_prompts, train_start, n_train_prompts, seed=0)
    ev = editor_pool(cfg, eval_prompts, 0, n_eval_prompts, seed=1)
    y = attribute_targets(tr[1] + ev[1]).numpy()
    labels: Dict[str, List[Any]] = {}
    for i, k in enumerate(SHAPE_KINDS):
        labels[f"{k}_present"] = (y[:, 3 * i] > 0).tolist()
        labels[f"{k}_color"] = [int(c) if c else None for c in y[:, 3 * i]]
        labels[f"{k}_place"] = [int(c) if c else None for c in y[:, 3 * i + 2]]
    labels["background"], labels["defect"] = y[:, -2].tolist(), y[:, -1].tolist()
    return tr[0] + ev[0], tr[2] + ev[2], labels, len(tr[0])


def probe_model(path: str, n_train: int, n_eval: int, seed: int, editor_set=None, with_source: bool = False
                ) -> Dict[str, Any]:
    import torch

    from edit_rlhf.vlm.probe import linear_probe, vision_features
    from transformers import AutoModelForImageTextToText, AutoProcessor

    t0 = time.time()
    model = AutoModelForImageTextToText.from_pretrained(path, torch_dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    if editor_set is None:
        images, labels = probe_set(n_train + n_eval, seed)
    else:
        images, sources, labels, n_train = editor_set
        n_eval = len(images) - n_train
    x = vision_features(model, processor, images)
    if with_source:  # the source's tokens beside the edit's, as the RRM gets both images
        x = np.concatenate([vision_features(model, processor, sources), x], axis=1)
    probes = {}
    for name, ys in labels.items():
        keep = np.array([y is not None for y in ys])
        idx_tr = [i for i in range(n_train) if keep[i]]
        idx_ev = [i for i in range(n_train, n_train + n_eval) if keep[i]]
        r = linear_probe(x[idx_tr], [ys[i] for i in idx_tr], x[idx_ev], [ys[i] for i in idx_ev])
        probes[name] = {"accuracy": round(r["accuracy"], 3), "majority": round(r["majority"], 3),
                        "n_eval": r["n_eval"]}
    present = [v for k, v in probes.items() if k.endswith("_present")]
    tokens = int(x.shape[1] // model.config.text_config.hidden_size) // (2 if with_source else 1)
    return {"model": os.path.abspath(path), "visual_tokens_per_image": tokens, "with_source": with_source,
            "feature_dim": int(x.shape[1]), "probes": probes,
            "presence_above_majority_mean": round(float(np.mean([p["accuracy"] - p["majority"] for p in present])), 3),
            "seconds": round(time.time() - t0, 1)}


def main(argv=None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="name=path of a Qwen2.5-VL folder (with its processor)")
    ap.add_argument("--n-train", type=int, default=None, help="images (default 2000) or, with --editor-edits, prompts (300)")
    ap.add_argument("--n-eval", type=int, default=None, help="images (default 1000) or, with --editor-edits, prompts (64)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--editor-edits", action="store_true",
                    help="probe the sandbox editor's own SDE edits (8 per prompt) instead of rendered scenes: "
                         "--n-train / --n-eval count prompts (defaults 300 / 64), labels are what the oracle sees")
    ap.add_argument("--with-source", action="store_true", help="features: the source's tokens beside the edit's")
    ap.add_argument("--train-prompts", default=".cache/sandbox_big/prompts_train")
    ap.add_argument("--eval-prompts", default=".cache/sandbox/prompts_eval")
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default=None)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if a.n_train is None:
        a.n_train = 300 if a.editor_edits else 2000
    if a.n_eval is None:
        a.n_eval = 64 if a.editor_edits else 1000
    if a.with_source and not a.editor_edits:
        raise SystemExit("vision_probe: --with-source needs --editor-edits (rendered scenes have no source)")
    editor_set = (editor_probe_set(a.train_prompts, a.eval_prompts, a.n_train, a.n_eval)
                  if a.editor_edits else None)
    named = {}
    for item in a.models:
        if "=" not in item:
            raise SystemExit(f"vision_probe: {item!r}: expected name=path")
        name, path = item.split("=", 1)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise SystemExit(f"vision_probe: {name}={path} is not a model folder (no config.json)")
        named[name] = probe_model(path, a.n_train, a.n_eval, a.seed, editor_set, a.with_source)
    rep = {"benchmark": "vision_probe", "images": "editor edits" if a.editor_edits else "rendered scenes",
           "n_train": a.n_train, "n_eval": a.n_eval, "seed": a.seed, "models": named,
           "command": " ".join(["python", *sys.argv] if argv is None else ["vision_probe.main", *argv]),
           "note": a.note}
    from common import emit

    return emit(rep, a.out)


if __name__ == "__main__":
    main()
