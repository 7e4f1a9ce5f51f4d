"""The plan as a table (what `edit-rlhf plan` prints; the README shows it for the shipped production config)."""
from __future__ import annotations

from typing import List

from edit_rlhf.plan.budget import GiB
from edit_rlhf.plan.planner import Plan

COLUMNS = (("weights", "weights"), ("trainable", "trainable"), ("grads", "grads"), ("optimizer", "optim"),
           ("activations", "activ."), ("kv_cache", "KV cache"), ("other", "other"))


def _gb(x) -> str:
    return "-" if not x else f"{x / GiB:.1f}"


def table(plan: Plan) -> str:
    lines: List[str] = [f"plan: {plan.config} ({plan.pipeline})"]
    for k, v in plan.archs.items():
        lines.append(f"  {k}: architecture from {v}")
    head = ["pool", "actors x GPUs", "GPU GiB"] + [c for _, c in COLUMNS] + ["peak/GPU", "fits"]
    rows = []
    for p in plan.pools:
        it = dict(p.items)
        other = sum(v for k, v in it.items() if k not in dict(COLUMNS))
        gpus = f"{p.actors} x {p.gpus_per_actor:g}" if p.gpus_per_actor else f"{p.actors} x CPU"
        fits = "-" if p.fits is None else ("yes" if p.fits else "NO")
        rows.append([p.name, gpus, "-" if p.gpu_memory_gb is None else f"{p.gpu_memory_gb:g}",
                     _gb(it.get("weights")), f"{p.trainable / 1e9:.2f} B" if p.trainable else "-",
                     _gb(it.get("grads")), _gb(it.get("optimizer")), _gb(it.get("activations")),
                     _gb(it.get("kv_cache")), _gb(other), _gb(p.peak) if p.gpus_per_actor else "-", fits])
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join("{:<%d}" % w if i < 2 else "{:>%d}" % w for i, w in enumerate(widths))
    lines += ["", fmt.format(*head), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*r) for r in rows]
    lines.append("(GiB per GPU; other = runtime, buffers, CUDA graphs, reference model; vLLM peak = "
                 "gpu_memory_utilization x GPU)")
    for p in plan.pools:
        for n in p.notes:
            lines.append(f"  {p.name}: {n}")
    f = plan.facts
    if "editor_activation_bytes_per_token" in f:
        for k, v in f["editor_activation_bytes_per_token"].items():
            lines.append(f"  editor activations per token ({k}): {v / 1024:.0f} KiB")
    if "sequence" in f:
        s = f["sequence"]
        lines.append(f"  RRM sequence: {s['prompt']} prompt + {s['images']} image + {s['trace']} trace = "
                     f"{s['total']} tokens")
    if "lora_sync" in f:
        s = f["lora_sync"]
        lines.append(f"  LoRA sync ({s['transport']}): {s['bytes'] / GiB:.2f} GiB to each of {s['actors']} rollout "
                     f"actors = {s['bytes_moved'] / GiB:.1f} GiB moved per step")
    if "weight_sync" in f:
        s = f["weight_sync"]
        lines.append(f"  RRM weight sync ({s['weights_bytes'] / GiB:.1f} GiB into {s['engines']} engines x TP "
                     f"{s['tensor_parallel']}); transport chosen: {s['chosen']}")
        for t in ("object_store", "nccl"):
            lines.append(f"    {t}: {s[t]['bytes_moved'] / GiB:.1f} GiB moved, {s[t]['copies']} copies per sync")
    lines.append("")
    lines.append("every pool fits" if plan.ok else "does not fit: " + "; ".join(plan.failures()))
    return "\n".join(lines)
