"""Input paths: checked before anything starts, built only where the config names a buildable sandbox default.

`prepare.build_missing` (grpo) / `build_missing` (eval-editor) builds inputs the project knows how to make:

- tiny random models (`edit-rlhf make-tiny-models`) only at `.cache/tiny_models/{editor,rrm}`,
- sandbox data (`edit-rlhf sandbox build`) only at `.cache/sandbox/<split>`,

(relative to the working directory or to the repository). Any other missing path - a typo such as
`models/sanbox/editor`, a folder whose parent does not exist - fails at once, before Ray starts and before
anything is written, naming the path and the closest existing one.
"""
from __future__ import annotations

import difflib
import os
from typing import Iterable, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODELS = os.path.join(".cache", "tiny_models")
SANDBOX_DATA = os.path.join(".cache", "sandbox")
SANDBOX_SPLITS = {"prompts_train", "prompts_eval", "pairs_train", "pairs_eval", "traces_train", "traces_eval",
                  "candidates"}


class PathError(FileNotFoundError):
    """A configured input path that does not exist (and is not a sandbox default to build)."""


def _roots(rel: str) -> List[str]:
    return sorted({os.path.abspath(rel), os.path.join(REPO, rel)})


def buildable_models(path: str) -> bool:
    """True when `path` is the tiny-model folder's editor/rrm (what `make-tiny-models` writes)."""
    p = os.path.abspath(path)
    return os.path.basename(p) in ("editor", "rrm") and os.path.dirname(p) in _roots(TINY_MODELS)


def buildable_data(path: str) -> bool:
    """True when `path` is one split of the sandbox default (what `sandbox build .cache/sandbox` writes)."""
    p = os.path.abspath(path)
    return os.path.basename(p) in SANDBOX_SPLITS and os.path.dirname(p) in _roots(SANDBOX_DATA)


def closest(path: str) -> Optional[str]:
    """The existing path most like `path`: walk up to the deepest existing ancestor, then pick the most similar
    name at each missing level (difflib), as far as such names exist."""
    p = os.path.abspath(path)
    parts = []
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            return None
        parts.append(os.path.basename(p))
        p = parent
    if os.path.dirname(p) == p:  # only the filesystem root exists: any "closest" name there is a guess
        return None
    for name in reversed(parts):
        try:
            names = sorted(os.listdir(p)) if os.path.isdir(p) else []
        except OSError:
            break
        match = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        if not match:
            break
        p = os.path.join(p, match[0])
    return p


def _rel(p: str) -> str:
    r = os.path.relpath(p)
    return r if not r.startswith("..") else p


def missing(key: str, path: str, hint: str = "") -> PathError:
    near = closest(path)
    msg = f"config key '{key}': {path} does not exist"
    if near and os.path.abspath(near) != os.path.abspath(path):
        msg += f" (closest existing path: {_rel(near)})"
    if hint:
        msg += f"; {hint}"
    return PathError(msg)


def require(key: str, path: Optional[str], marker: Optional[str] = None, build_ok: bool = False,
            kind: str = "model") -> None:
    """Fail (PathError) unless `path` exists (and holds `marker`), or it will be built (`build_ok` and
    `path` is a buildable default of `kind` 'model' or 'data')."""
    if not path:
        return
    target = os.path.join(path, marker) if marker else path
    if os.path.exists(target):
        return
    can_build = buildable_models(path) if kind == "model" else buildable_data(path)
    if build_ok and can_build:
        return
    if os.path.exists(path) and marker:
        raise PathError(f"config key '{key}': {path} is not a {kind} folder (no {marker})")
    hint = ""
    if can_build:
        hint = "it is a sandbox default: set prepare.build_missing=true (or build_missing=true) to build it"
    elif kind == "model":
        hint = f"tiny random models are built only at {TINY_MODELS}/editor and {TINY_MODELS}/rrm"
    else:
        hint = f"sandbox data is built only under {SANDBOX_DATA}/ (edit-rlhf sandbox build {SANDBOX_DATA})"
    raise missing(key, path, hint)


def check_inputs(items: Iterable[tuple], build_ok: bool) -> None:
    """`items`: (key, path, marker, kind) tuples; every path must exist or be a buildable default."""
    for key, path, marker, kind in items:
        require(key, path, marker, build_ok, kind)
