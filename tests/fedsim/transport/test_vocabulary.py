"""One vocabulary: stage names live in secagg.stages, method names in the method registry, nowhere else."""

from __future__ import annotations

import ast
from pathlib import Path

from fedsim.config import RunConfig
from fedsim.methods.registry import METHOD_NAMES, METHOD_TABLE
from fedsim.secure_sum.dropouts import DropoutPlan
from fedsim.transport.vocabulary import DROPOUT_STAGES, FRAME_STAGES, INPUT_STAGE, NO_STAGE
from secagg.stages import MASKED_INPUT_COLLECTION, STAGES
from tests.support import REPO_ROOT as REPO
PACKAGES = ("fedsim", "secagg", "accounting", "cli")


def string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string literal of a module that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def literals_outside(names: set[str], home: Path) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path != home:
                found += [f"{path.relative_to(REPO)}:{line} {value!r}" for line, value in string_constants(path) if value in names]
    return found


def test_stage_names_are_written_once():
    assert literals_outside(set(STAGES), REPO / "secagg" / "stages.py") == []


def test_method_names_are_written_once():
    assert literals_outside(set(METHOD_NAMES), REPO / "fedsim" / "methods" / "registry.py") == []


def test_every_list_of_stages_is_derived_from_the_protocols():
    assert FRAME_STAGES == (NO_STAGE, *STAGES)
    assert DROPOUT_STAGES == STAGES == RunConfig().dropout_stages == DropoutPlan().stages
    assert INPUT_STAGE == MASKED_INPUT_COLLECTION


def test_methods_carry_their_own_flags():
    flagged = {name: (m.smoothing, m.scaled_b_lr) for name, m in METHOD_TABLE.items()}
    assert flagged["la-lora"] == (True, True)
    assert all(flags == (False, False) for name, flags in flagged.items() if name != "la-lora")
