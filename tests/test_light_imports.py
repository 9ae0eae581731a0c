"""What importing a module costs: the CLI, the config and the report decoder stay light.

Each check runs in a fresh interpreter (tests.support.isolation), so nothing a previous
test imported hides a heavy import.
"""

from __future__ import annotations

import pytest

from tests.support.isolation import loaded_modules_after_import

HEAVY = ("torch", "opacus", "peft", "timm", "transformers")


@pytest.mark.parametrize("module", ["cli.app", "fedsim.config", "fedsim.options", "secagg.stages", "accounting"])
def test_module_loads_no_torch_stack(module):
    """`fedsim --help` and `fedsim budget ...` read run directories without importing torch."""
    assert loaded_modules_after_import(module, HEAVY) == []


def test_decoding_a_report_loads_no_training_stack():
    """The four-field report lives with the other payloads, not with the Opacus trainer."""
    assert loaded_modules_after_import("fedsim.transport.payloads", HEAVY) == ["torch"]
