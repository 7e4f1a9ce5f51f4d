"""Make PyPI's torchvision (linked against CUDA) importable beside torch 2.13.0+cpu.

Its C++ ops cannot load there, and two unguarded `register_fake` decorators then raise
"operator torchvision::nms does not exist" at import. Guard them with `_has_ops()`. transforms.v2 and the
functional image ops (what the Qwen2.5-VL processors and vLLM use) then work; torchvision.ops and
torchvision.io decoders do not, and nothing here needs them. Idempotent; a no-op where torchvision's ops load.
"""
import importlib.util
import pathlib

spec = importlib.util.find_spec("torchvision")
if spec is None:
    raise SystemExit("torchvision is not installed")
path = pathlib.Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
src = path.read_text()
n = 0
for op in ("nms", "qnms"):
    old = f'@torch.library.register_fake("torchvision::{op}")'
    new = f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops() else (lambda f: f))'
    if old in src:
        src = src.replace(old, new)
        n += 1
path.write_text(src)
print(f"torchvision: guarded {n} register_fake decorator(s) in {path}")
