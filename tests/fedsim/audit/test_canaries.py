"""Gradient canaries enter the real DP step: distinct coordinates, rows of norm C, active factors only, the
record rate q; and the observers undo LA-LoRA's smoothing exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cli.audit import OBSERVER_NAMES
from fedsim.audit.canaries import CanaryInjector, draw_canaries
from fedsim.audit.errors import AuditError
from fedsim.audit.observers import OBSERVERS, unsmooth
from fedsim.dp.randomness import SecretRandom
from fedsim.methods.smoothing import smooth_1d, smooth_2d


def test_canaries_lie_on_distinct_coordinates_of_the_released_parameters():
    sizes = {"a": 12, "b": 30, "head": 7}
    canaries = draw_canaries(sizes, 40, 2.5, SecretRandom())
    flat = [sum(list(sizes.values())[: list(sizes).index(n)]) + int(o) for n, o in zip(canaries.names, canaries.offsets)]
    assert len(set(flat)) == 40 and all(0 <= o < sizes[n] for n, o in zip(canaries.names, canaries.offsets))
    assert 5 < canaries.members.sum() < 35 and canaries.norm == 2.5
    with pytest.raises(AuditError, match=r"canaries=50 is invalid: expected an integer in \[2, 49\]"):
        draw_canaries(sizes, 50, 1.0, SecretRandom())


def test_member_canaries_of_active_parameters_are_appended_as_rows_of_norm_c():
    params = {"a": torch.nn.Parameter(torch.zeros(3, 4)), "b": torch.nn.Parameter(torch.zeros(5)), "head": torch.nn.Parameter(torch.zeros(2, 2))}
    canaries = draw_canaries({n: p.numel() for n, p in params.items()}, 20, 3.0, SecretRandom())
    injector = CanaryInjector(canaries, params, 1.0, SecretRandom())  # q = 1: every member, every step
    active = [params["a"], params["head"]]  # "b" inactive this step
    for p in active:
        p.grad_sample = torch.ones((2, *p.shape))  # two real records
    injector(0, active)
    rows = {p.grad_sample.shape[0] for p in active}
    members_active = [i for i in range(20) if canaries.members[i] and canaries.names[i] != "b"]
    assert rows == {2 + len(members_active)}
    extra = torch.cat([p.grad_sample[2:].reshape(len(members_active), -1) for p in active], dim=1)
    assert torch.allclose(extra.norm(dim=1), torch.full((len(members_active),), 3.0))
    assert (extra != 0).sum(dim=1).eq(1).all()  # one coordinate each
    entered = np.zeros(20, dtype=int)
    entered[members_active] = 1
    assert (injector.entered == entered).all()


def test_member_canaries_enter_a_step_at_the_record_rate():
    params = {"w": torch.nn.Parameter(torch.zeros(400))}
    canaries = draw_canaries({"w": 400}, 400, 1.0, SecretRandom())
    injector = CanaryInjector(canaries, params, 0.25, SecretRandom())
    for step in range(20):
        params["w"].grad_sample = torch.zeros((0, 400))
        injector(step, [params["w"]])
    rate = injector.entered[canaries.members].mean() / 20
    assert abs(rate - 0.25) < 0.03 and injector.entered[~canaries.members].sum() == 0


def test_unsmoothing_inverts_la_lora_smoothing():
    matrix, vector = torch.randn(8, 6), torch.randn(13)
    assert torch.allclose(unsmooth(smooth_2d(matrix, 1.0), 1.0, matrix=True), matrix, atol=1e-5)
    assert torch.allclose(unsmooth(smooth_1d(vector, 1.0), 1.0, matrix=False), vector, atol=1e-5)


def test_the_cli_lists_the_observers_the_library_has():
    assert OBSERVER_NAMES == OBSERVERS
