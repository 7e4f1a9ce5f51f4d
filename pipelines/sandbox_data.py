"""`edit-rlhf sandbox-data`: build (or reuse) the sandbox datasets as a pipeline stage.

The same builder as `edit-rlhf sandbox build OUT`; as a registered pipeline it can be the first stage of
`edit-r1`, so a whole run starts from nothing but the shipped base models. A folder that already holds a build
with the same settings is reused (the build is a pure function of its config); a different one is an error
unless `reuse=false`, which rebuilds.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict


def run_sandbox_data(cfg, quiet: bool = False) -> Dict[str, Any]:
    from edit_rlhf.config import ConfigError
    from edit_rlhf.sandbox.build import build_sandbox

    t0 = time.time()
    out = os.path.abspath(cfg.output)
    sb = cfg.sandbox()
    man_p = os.path.join(out, "manifest.json")
    reused = False
    if os.path.exists(man_p):
        with open(man_p) as f:
            old = json.load(f)
        if cfg.reuse and old.get("config") == json.loads(json.dumps(sb.to_dict())):
            man, reused = old, True
        elif cfg.reuse:
            raise ConfigError(f"config key 'output': {out} holds a sandbox built with other settings "
                              f"({old.get('config')}); choose another folder or set reuse=false to rebuild")
        else:
            man = build_sandbox(out, sb, overwrite=True)
    else:
        man = build_sandbox(out, sb)
    s = {"pipeline": "sandbox-data", "output": out, "reused": reused, "counts": man["counts"],
         "seconds": round(time.time() - t0, 1)}
    if not quiet:
        print(f"sandbox-data: {'reused' if reused else 'built'} {out} "
              + " ".join(f"{k}={v}" for k, v in man["counts"].items()) + f" in {s['seconds']:.0f}s", flush=True)
    return s
