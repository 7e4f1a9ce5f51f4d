"""Compile DeepSpeed's JIT ops once at set-up (cached per environment in <venv>/torch_extensions, see
edit_rlhf.runtime.set_extensions_dir), so the first learner rank does not spend ~45 s building them mid-run.
On CPU that is the shared-memory comm op."""
import os
import time

from edit_rlhf.runtime import set_extensions_dir

set_extensions_dir()
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
from deepspeed.accelerator import get_accelerator  # noqa: E402

t = time.time()
builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is not None and builder.is_compatible():
    builder.load(verbose=False)
    print(f"deepspeed: {builder.NAME} ready ({time.time() - t:.1f}s)")
else:
    print("deepspeed: no JIT op to prebuild on this accelerator")
