"""What a round's metrics row says about the protocol's named clients (metrics.jsonl)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from fedsim.secure_sum.stages import RoundOutcome
from fedsim.server.callbacks import RoundResult
from fedsim.server.loop import round_metrics
from fedsim.server.records import merge_outcomes


def test_rejections_disputes_and_corruption_reach_the_row_of_every_phase() -> None:
    """DEeR-like two phases: the culprits of both, one dispute, and a corrupted second sum."""
    first = RoundOutcome(
        (1, 2, 3, 4), (1, 2, 3), False, None, {"MaskedInputCollection": (4,)},
        rejections=((4, "ShareKeys", "its share ciphertext to client 1 fails", "malicious"),),
        disputes=((2, 3, "key checks differ"),),
    )
    second = RoundOutcome(
        (1, 2, 3, 4), (1, 2, 3), True, "corrupted: out of range", rejections=(), corrupted=True,
    )
    merged = merge_outcomes([first, second])
    assert merged.corrupted and merged.aborted
    run = SimpleNamespace(method=SimpleNamespace(name="deer"))
    row = round_metrics(run, RoundResult(1, (), merged, 0.5), {"accuracy": None, "loss": None, "epsilon": 1.0,
                                                              "epsilon_rdp": 1.1, "delta": 1e-5}, seconds=1.0)
    data = json.loads(json.dumps(row.to_dict()))
    assert data["rejections"] == [
        {"client": 4, "stage": "ShareKeys", "verdict": "malicious", "reason": "its share ciphertext to client 1 fails"}
    ]
    assert data["disputes"] == [{"clients": [2, 3], "reason": "key checks differ"}]
    assert data["corrupted"] is True and data["abort_reason"] == "corrupted: out of range"
