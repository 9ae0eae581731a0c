"""`python -m fedsim` (the entry point torchrun uses) refuses bad input before any process starts."""

from __future__ import annotations

from tests.support.fedsim_cli import fedsim


def test_bad_input_exits_2_naming_the_field(tmp_path):
    completed = fedsim("run", "--noise-multiplier", "-1", "--run-dir", str(tmp_path / "x"))
    assert completed.returncode == 2
    assert "noise_multiplier" in completed.stderr and "-1" in completed.stderr
    assert not (tmp_path / "x").exists()


def test_compare_refuses_bad_targets(tmp_path):
    completed = fedsim("compare", "-e", "1,-2", "-o", str(tmp_path / "x"))
    assert completed.returncode == 2 and "epsilons" in completed.stderr
