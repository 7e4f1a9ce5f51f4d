"""Vision warm-up: teach the sandbox VLM's vision tower to see shapes and image defects, with a throwaway head.

`benchmarks/vision_probe.py` showed that the sandbox VLMs' visual tokens barely encode what an RRM must check:
linear probes read square / triangle presence near their majority rate and image defects (blur, noise, colour
cast) at chance, in the base VLM, in the shipped RRM after 4700 SFT steps, in a 4x larger tower and with 64
tokens per image. Text targets (scene descriptions, the RRM's observations and checks) train the tower through a
few answer tokens per example, and it learns slowly. Trained directly, the same tower learns quickly: in a few
thousand steps its shape presence and defect readings come close to the labels.

`edit-rlhf sandbox vision OUT` does that, as a vision encoder is pre-trained before a VLM is assembled: a linear
head on every visual token (the merger's output, what the language model receives), max-pooled over the image's
tokens, predicts per shape kind "absent" or its colour, its second colour (a half-recoloured shape) and its place
(one of nine zones), the background, and the image's defect (none / blur / noise / cast). Scenes are drawn fresh
every step (`sandbox.scene.sample_scene`, a `degraded_frac` of them degraded by `sandbox.candidates.degrade`);
a `candidate_frac` of each batch comes from a pool of the sandbox's graded candidate edits (partial, over-edit,
wrong object, moved, resized, degraded, ...) whose targets are what the oracle sees in them (`oracle.verify`'s
`seen`), and an `editor_frac` from a pool of the sandbox editor's own SDE edits (`editor_pool`), labelled the same
way - the blurry, half-done images the RRM has to judge when it rewards Flow-GRPO, which a tower warmed on
renders alone does not read (linear probes of its tokens on editor edits sit at the majority rate). What the oracle
sees in such an edit is anchored to the source (a blob where the circle was is the circle), so those examples are
read by a second head (`PairHead`) from the source's and the edit's tokens at each grid position, as the RRM gets
both images. Only the vision tower and the head train; the head is discarded, and OUT is the
init model with its new vision tower - same architecture, same processor, the language model bit for bit.
The RRM SFT (`rrm-sft`, model.path=OUT) then teaches the language model to read the new visual tokens.
OUT/vision.json records the held-out attribute accuracies (beside their majority rates) along the way.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .vlm import load_init, save_stage

DEFECTS = ("none", "blur", "noise", "cast")
_DEFECT_WORDS = {"blurry": "blur", "noisy": "noise", "colour cast": "cast"}  # the oracle's words (oracle._seen)


def scene_seen(scene, defect: str = "none") -> Dict[str, Any]:
    """What the oracle would see in a clean render of `scene` (+ `defect`), in `oracle.verify`'s `seen` layout."""
    return {"background": scene.background, "defects": [defect] if defect != "none" else [],
            "shapes": [{"kind": sh.kind, "color": sh.color, "color2": None, "cx": sh.cx, "cy": sh.cy}
                       for sh in scene.shapes]}


def target_sizes() -> List[int]:
    """Classes per target column: per shape kind its colour, its second colour (0 = absent / none), its location
    (0 = absent, else 1 + LOCATIONS index); then the background and the defect."""
    from edit_rlhf.sandbox.scene import BACKGROUNDS, LOCATIONS, SHAPE_COLORS, SHAPE_KINDS

    per_kind = [len(SHAPE_COLORS) + 1, len(SHAPE_COLORS) + 1, len(LOCATIONS) + 1]
    return per_kind * len(SHAPE_KINDS) + [len(BACKGROUNDS), len(DEFECTS)]


def attribute_targets(seens: Sequence[Dict[str, Any]], size: int = 64) -> torch.Tensor:
    """(N, columns of `target_sizes()`) long, from `seen` dicts (`scene_seen`, or the oracle's `seen` of a graded
    candidate edit: half-recoloured shapes have a second colour, moved shapes their new place)."""
    from edit_rlhf.sandbox.scene import BACKGROUNDS, LOCATIONS, SHAPE_COLORS, SHAPE_KINDS, location_word

    colors = list(SHAPE_COLORS)
    y = torch.zeros(len(seens), len(target_sizes()), dtype=torch.long)
    for i, seen in enumerate(seens):
        for sh in seen["shapes"]:
            if sh.get("color") not in SHAPE_COLORS:
                continue  # not seen (gone, or too little of it)
            j = 3 * SHAPE_KINDS.index(sh["kind"])
            y[i, j] = 1 + colors.index(sh["color"])
            if sh.get("color2") in SHAPE_COLORS:
                y[i, j + 1] = 1 + colors.index(sh["color2"])
            if sh.get("cx") is not None:
                y[i, j + 2] = 1 + LOCATIONS.index(location_word(sh["cx"], sh["cy"], size))
        bg = seen["background"]
        y[i, -2] = list(BACKGROUNDS).index(bg) if bg in BACKGROUNDS else 0
        words = [_DEFECT_WORDS.get(d, d) for d in seen.get("defects", [])]
        y[i, -1] = DEFECTS.index(words[0]) if words and words[0] in DEFECTS else 0
    return y


def sample_images(rng: np.random.Generator, n: int, degraded_frac: float, size: int = 64
                  ) -> Tuple[List[np.ndarray], List[Dict[str, Any]]]:
    """`n` fresh scenes, rendered, each degraded (a random defect) with probability `degraded_frac`; their `seen`."""
    from edit_rlhf.sandbox.candidates import degrade
    from edit_rlhf.sandbox.scene import render, sample_scene

    images, seens = [], []
    for _ in range(n):
        s = sample_scene(rng, size)
        d = DEFECTS[1 + int(rng.integers(3))] if rng.random() < degraded_frac else "none"
        img = render(s)
        images.append(img if d == "none" else degrade(rng, img, d))
        seens.append(scene_seen(s, d))
    return images, seens


def candidate_pool(n: int, seed: int, offset: int = 300000) -> Tuple[List[np.ndarray], List[Dict[str, Any]]]:
    """`n` graded candidate edits of fresh sandbox train-split prompts (indices from `offset`: disjoint from built
    datasets and from the perception stage's), a grade drawn uniformly from the feasible ones, with what the
    oracle sees in each (`verify(...).detail['seen']`)."""
    from edit_rlhf.sandbox.build import make_prompt
    from edit_rlhf.sandbox.candidates import feasible_grades, make_candidate
    from edit_rlhf.sandbox.config import SandboxConfig
    from edit_rlhf.sandbox.oracle import verify

    sb = SandboxConfig(seed=seed)
    rng = np.random.default_rng([seed, 17])
    images, seens = [], []
    for i in range(n):
        p = make_prompt(sb, "train", offset + i)
        grades = feasible_grades(p["scene"], p["edit"])
        img = make_candidate(rng, p["scene"], p["edit"], grades[int(rng.integers(len(grades)))])
        images.append(img)
        seens.append(verify(p["scene"], p["edit"], p["principles"], img).detail["seen"])
    return images, seens


def editor_pool(cfg, prompts: str, start: int, n_prompts: int, seed: int, say=lambda msg: None
                ) -> Tuple[List[np.ndarray], List[Dict[str, Any]], List[np.ndarray]]:
    """The editor's own SDE edits of `n_prompts` prompt rows from `start` (`cfg.editor_samples` per prompt, sampled
    as a GRPO group of `cfg.editor_config`'s editor), what the oracle sees in each, and each edit's source (as the
    editor saw it); edits the oracle cannot verify are left out and counted."""
    from edit_rlhf.data.images import editor_view

    from .editor_pairs import scored_edits

    stats: Dict[str, int] = {}
    images, seens, sources = [], [], []
    for g in scored_edits(prompts, cfg.editor_config, None, start, n_prompts, cfg.editor_samples, seed, stats):
        src = editor_view(g["row"]["source_image"], *np.asarray(g["images"][0]).shape[:2])  # one per group
        for img, res in zip(g["images"], g["results"]):
            if res is not None:
                images.append(img)
                seens.append(res.detail["seen"])
                sources.append(src)
    if stats.get("oracle_failed"):
        say(f"{prompts}: {stats['oracle_failed']} editor edits the oracle could not verify, left out")
    return images, seens, sources


class AttributeHead(torch.nn.Module):
    """Linear per visual token, max-pooled over each image's tokens: (N*T, D) -> one logit block per target
    column of `target_sizes()`."""

    def __init__(self, hidden: int, sizes: Sequence[int]):
        super().__init__()
        self.sizes = list(sizes)
        self.linear = torch.nn.Linear(hidden, sum(self.sizes))

    def forward(self, tokens: torch.Tensor, n_images: int) -> List[torch.Tensor]:
        pooled = self.linear(tokens.reshape(n_images, -1, tokens.shape[-1])).max(1).values
        return list(pooled.split(self.sizes, dim=1))


class PairHead(AttributeHead):
    """An AttributeHead on (source token, edit token) pairs at the same grid position: what the oracle sees in an
    editor edit is anchored to the source (a blob where the circle was *is* the circle, recoloured or not), so it
    is not a function of the edited image alone - a single-image head on editor edits stays at the majority rate.
    forward((src (N*T, D), edit (N*T, D)), N)."""

    def __init__(self, hidden: int, sizes: Sequence[int]):
        super().__init__(2 * hidden, sizes)

    def forward(self, tokens, n_images: int) -> List[torch.Tensor]:
        src, edit = tokens
        return super().forward(torch.cat([src, edit], dim=-1), n_images)


def head_loss(head: AttributeHead, tokens, y: torch.Tensor) -> torch.Tensor:
    return sum(torch.nn.functional.cross_entropy(lo, y[:, j]) for j, lo in enumerate(head(tokens, len(y))))


def attribute_accuracy(head: AttributeHead, tokens, y: torch.Tensor) -> Dict[str, float]:
    """Held-out accuracy per attribute beside its majority rate: `<kind>_present`, `<kind>_color`,
    `<kind>_color2` and `<kind>_place` (over images where the kind is seen), `background`, `defect`, and
    `shapes_exact` (every kind's presence and colour right)."""
    from edit_rlhf.sandbox.scene import SHAPE_KINDS

    with torch.no_grad():
        pred = torch.stack([lo.argmax(-1) for lo in head(tokens, len(y))], 1)
    out: Dict[str, float] = {}

    def put(name: str, p: torch.Tensor, gold: torch.Tensor) -> None:
        if len(gold):
            out[f"{name}/accuracy"] = round(float((p == gold).float().mean()), 4)
            out[f"{name}/majority"] = round(float(torch.bincount(gold).max()) / len(gold), 4)

    for i, k in enumerate(SHAPE_KINDS):
        c = 3 * i
        put(f"{k}_present", (pred[:, c] > 0).long(), (y[:, c] > 0).long())
        has = y[:, c] > 0
        for name, j in (("color", c), ("color2", c + 1), ("place", c + 2)):
            put(f"{k}_{name}", pred[has, j], y[has, j])
    put("background", pred[:, -2], y[:, -2])
    put("defect", pred[:, -1], y[:, -1])
    cols = [3 * i for i in range(len(SHAPE_KINDS))]
    out["shapes_exact"] = round(float((pred[:, cols] == y[:, cols]).all(1).float().mean()), 4)
    return out


def lr_at(step: int, cfg) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    cos = 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
    return cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def train_vision(model, processor, cfg, say=lambda msg: None) -> List[Dict[str, Any]]:
    """Train `model`'s vision tower (and a fresh AttributeHead) for `cfg.steps` steps; returns the held-out curve.
    Every parameter outside the tower keeps requires_grad as it was and receives no update."""
    from edit_rlhf.vlm.attention import batched_vision_attention
    from edit_rlhf.vlm.probe import vision_features, visual_tokens
    from edit_rlhf.vlm.sft import vision_tower

    visual = vision_tower(model)
    torch.manual_seed(cfg.seed)
    head = AttributeHead(model.config.text_config.hidden_size, target_sizes())
    pair_head = PairHead(model.config.text_config.hidden_size, target_sizes())  # editor edits, read with their source
    params = list(visual.parameters()) + list(head.parameters()) + list(pair_head.parameters())
    for p in visual.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    t0 = time.time()
    evals = {"": sample_images(np.random.default_rng([cfg.eval_seed, 1]), cfg.eval_n, cfg.degraded_frac)}
    pool: Tuple[List[np.ndarray], List[Dict[str, Any]]] = ([], [])
    if cfg.candidate_frac > 0:
        evals["candidates/"] = candidate_pool(cfg.eval_n, cfg.eval_seed, offset=400000)
        pool = candidate_pool(cfg.candidate_pool, cfg.seed)
        say(f"{cfg.candidate_pool} training and {cfg.eval_n} held-out candidate edits in {time.time() - t0:.0f}s")
    editor: Tuple[List[np.ndarray], List[Dict[str, Any]], List[np.ndarray]] = ([], [], [])
    if cfg.editor_frac > 0:
        t1 = time.time()
        evals["editor/"] = editor_pool(cfg, cfg.editor_eval_prompts, 0, max(1, cfg.eval_n // cfg.editor_samples),
                                       cfg.eval_seed, say)
        editor = editor_pool(cfg, cfg.editor_prompts, cfg.editor_start, cfg.editor_n_prompts, cfg.seed, say)
        say(f"{len(editor[0])} training and {len(evals['editor/'][0])} held-out editor edits in "
            f"{time.time() - t1:.0f}s")
    y_evals = {k: attribute_targets(v[1]) for k, v in evals.items()}
    curve: List[Dict[str, Any]] = []

    def features(images: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(vision_features(model, processor, images)).reshape(-1, head.linear.in_features)

    def evaluate(step: int, loss: Optional[float]) -> None:
        r: Dict[str, Any] = {"step": step, "seconds": round(time.time() - t0, 1), "train_loss": loss}
        for k, ev in evals.items():
            acc = (attribute_accuracy(pair_head, (features(ev[2]), features(ev[0])), y_evals[k]) if k == "editor/"
                   else attribute_accuracy(head, features(ev[0]), y_evals[k]))
            r.update({f"{k}{name}": v for name, v in acc.items()})
        curve.append(r)
        say(f"step {step}: shapes exact {r['shapes_exact']:.3f}, defect {r['defect/accuracy']:.3f} "
            f"(majority {r['defect/majority']:.3f})" + (f"; candidate edits: shapes exact "
            f"{r['candidates/shapes_exact']:.3f}" if "candidates/shapes_exact" in r else "")
            + (f"; editor edits: shapes exact {r['editor/shapes_exact']:.3f}" if "editor/shapes_exact" in r else ""))

    def batch(step: int) -> Tuple[List[np.ndarray], List[Dict[str, Any]], List[int]]:
        """Single images with their `seen` (fresh scenes, then candidates), and the editor-pool rows of the step."""
        rng = np.random.default_rng([cfg.seed, step])
        n_pool = int(rng.binomial(cfg.batch_size, cfg.candidate_frac)) if pool[0] else 0
        n_ed = min(int(rng.binomial(cfg.batch_size, cfg.editor_frac)), cfg.batch_size - n_pool) if editor[0] else 0
        images, seens = sample_images(rng, cfg.batch_size - n_pool - n_ed, cfg.degraded_frac)
        for i in rng.integers(0, len(pool[0]), n_pool) if n_pool else []:
            images.append(pool[0][i])
            seens.append(pool[1][i])
        return images, seens, [int(i) for i in rng.integers(0, len(editor[0]), n_ed)] if n_ed else []

    visual.train()
    running: List[float] = []
    with batched_vision_attention(True):
        evaluate(0, None)
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            images, seens, ed = batch(step)
            loss = head_loss(head, visual_tokens(visual, processor, images)[0], attribute_targets(seens)) \
                if images else 0.0
            if ed:
                tok = visual_tokens(visual, processor, [editor[2][i] for i in ed] + [editor[0][i] for i in ed])[0]
                src, edit = tok.reshape(2, -1, tok.shape[-1])
                loss = loss + head_loss(pair_head, (src, edit), attribute_targets([editor[1][i] for i in ed]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            running.append(float(loss.detach()))
            if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == cfg.steps:
                evaluate(step + 1, round(float(np.mean(running)), 4))
                running = []
    visual.eval()
    return curve


def run_vision_warmup(out: str, config_path: Optional[str], overrides: List[str], quiet: bool = False,
                      argv: Optional[List[str]] = None) -> Dict[str, Any]:
    from edit_rlhf.config import load_config
    from edit_rlhf.config.sft import VisionWarmupConfig
    from edit_rlhf.runtime import setup_process

    cfg = load_config(VisionWarmupConfig, config_path, overrides)
    setup_process(cfg.torch_threads)
    t0 = time.time()
    model, processor = load_init(cfg.init, "sandbox vision")
    say = (lambda msg: None) if quiet else (lambda msg: print(f"[vision] {msg}", flush=True))
    curve = train_vision(model, processor, cfg, say)
    return save_stage(out, "vision", model, processor, cfg, config_path, overrides, argv, curve, t0)
