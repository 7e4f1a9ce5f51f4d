"""What do the sandbox VLMs' vision towers see? Linear probes of each checkpoint's visual tokens (the tokens its
language model receives) for every attribute an RRM has to check: per shape kind its presence and its colour,
the background, and the image defect (none / blur / noise / cast). Each probe's held-out accuracy stands beside
its majority-class rate. Minutes per checkpoint, so a perception change can be judged before a two-hour RRM
regeneration.

    .venv/bin/python benchmarks/vision_probe.py [--n-train 2000] [--n-eval 1000] [--out FILE] [--note TEXT] \\
        vlm=models/sandbox/vlm rrm=models/sandbox/rrm_sft ...
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


def probe_model(path: str, n_train: int, n_eval: int, seed: int) -> Dict[str, Any]:
    import torch

    from edit_rlhf.vlm.probe import linear_probe, vision_features
    from transformers import AutoModelForImageTextToText, AutoProcessor

    t0 = time.time()
    model = AutoModelForImageTextToText.from_pretrained(path, torch_dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    images, labels = probe_set(n_train + n_eval, seed)
    x = vision_features(model, processor, images)
    probes = {}
    for name, ys in labels.items():
        keep = np.array([y is not None for y in ys])
        idx_tr = [i for i in range(n_train) if keep[i]]
        idx_ev = [i for i in range(n_train, n_train + n_eval) if keep[i]]
        r = linear_probe(x[idx_tr], [ys[i] for i in idx_tr], x[idx_ev], [ys[i] for i in idx_ev])
        probes[name] = {"accuracy": round(r["accuracy"], 3), "majority": round(r["majority"], 3),
                        "n_eval": r["n_eval"]}
    present = [v for k, v in probes.items() if k.endswith("_present")]
    return {"model": os.path.abspath(path), "visual_tokens_per_image": int(x.shape[1] // model.config.text_config.hidden_size),
            "feature_dim": int(x.shape[1]), "probes": probes,
            "presence_above_majority_mean": round(float(np.mean([p["accuracy"] - p["majority"] for p in present])), 3),
            "seconds": round(time.time() - t0, 1)}


def main(argv=None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="name=path of a Qwen2.5-VL folder (with its processor)")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default=None)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    named = {}
    for item in a.models:
        if "=" not in item:
            raise SystemExit(f"vision_probe: {item!r}: expected name=path")
        name, path = item.split("=", 1)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise SystemExit(f"vision_probe: {name}={path} is not a model folder (no config.json)")
        named[name] = probe_model(path, a.n_train, a.n_eval, a.seed)
    rep = {"benchmark": "vision_probe", "n_train": a.n_train, "n_eval": a.n_eval, "seed": a.seed, "models": named,
           "command": " ".join(["python", *sys.argv] if argv is None else ["vision_probe.main", *argv]),
           "note": a.note}
    from common import emit

    return emit(rep, a.out)


if __name__ == "__main__":
    main()
