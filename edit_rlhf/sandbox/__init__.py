"""Sandbox world v1: procedurally generated image edits with a programmatic oracle verifier.

Scenes of 1-3 coloured shapes (scene.py), five edit types with instructions and principles
(edits.py), an oracle that answers principles from pixels and scores 0-10 (oracle.py), graded
candidate edits (candidates.py), oracle traces in the RRM format (traces.py) and the dataset build
(config.py, build.py). numpy + PIL only; ``datasets`` is imported by the build when it runs.
"""
from .build import build_sandbox
from .candidates import GRADES, degrade, feasible_grades, make_candidate
from .config import SandboxConfig
from .edits import (
    EDIT_TYPES, EditSpec, apply_edit, instruction_text, principles, public_principles, sample_edit, vocabulary,
    words_of,
)
from .oracle import OracleResult, oracle_principles, oracle_record, parse_oracle_record, verify, verify_json
from .scene import (
    BACKGROUNDS, SHAPE_COLORS, SHAPE_KINDS, Scene, Shape, describe_scene, render, sample_scene, shape_mask,
)
from .traces import describe_seen, oracle_trace

__all__ = [
    "BACKGROUNDS", "EDIT_TYPES", "GRADES", "SHAPE_COLORS", "SHAPE_KINDS", "EditSpec", "OracleResult", "SandboxConfig",
    "Scene", "Shape", "apply_edit", "build_sandbox", "degrade", "describe_scene", "describe_seen", "feasible_grades",
    "instruction_text", "make_candidate", "oracle_principles", "oracle_record", "oracle_trace", "parse_oracle_record",
    "principles", "public_principles", "render", "sample_edit", "sample_scene", "shape_mask", "verify", "verify_json",
    "vocabulary", "words_of",
]
