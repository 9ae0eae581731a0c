"""``transcript-distinguisher``: can the server tell a client's input from its whole view?

Bonawitz et al., CCS 2017, Thm. 6.2: what the server sees of a survivor u, once it has
removed everything the protocol lets it remove (the self mask PRG(b_u), rebuilt from the
b-shares it is given, and the pairwise masks with dropped neighbours, rebuilt from their
s^SK), is x_u plus the pairwise masks with the other survivors: uniform in the ring.

The scenario runs two rounds of the real protocol (the last client drops before
MaskedInputCollection, so s^SK-shares are revealed too): one where every input is zero,
one where every input is a constant, far from uniform. From each server transcript it
rebuilds every secret it can and strips those masks from every survivor's vector, then
tests, with Pearson's chi-square:

- uniformity of each stripped vector's bytes (256 buckets) and of its words' top bytes
  (256 buckets): H0 "uniform ring elements";
- homogeneity of the byte frequencies of the same client's vectors under the two inputs
  (2 x 256 table): H0 "the view does not depend on the input".

Every p-value is Bonferroni-adjusted (times the number of tests). HOLDS when the smallest
adjusted p-value is above 0.001; a rejection is confirmed on two fresh transcripts, and
the verdict is BROKEN only if both reject (a false alarm twice has probability < 10^-6;
a real leak gives p ~ 0 every time). The figure reports the same test on the unmasked
constant inputs, to show the test's power.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedsim.attacks.registry import BROKEN, HOLDS, AttackResult
from fedsim.attacks.rounds import (
    MemoryRound,
    honest_threshold,
    masked_vector,
    protocol_params,
    recover_secret,
    revealed_shares,
    unmask,
)
from secagg import messages as wire
from secagg import stages
from secagg.agreement import pairwise_mask_key

__all__ = ["chi_square_sf", "homogeneity_p", "transcript_distinguisher", "uniformity_p"]

logger = logging.getLogger(__name__)

ALPHA = 1e-3
"""Reject "uniform / independent of the input" below this Bonferroni-adjusted p-value."""
DIM = 4096
"""Ring elements per input: 16 KiB of bytes per vector (64 expected per byte value)."""


# --- chi-square --------------------------------------------------------------------------------


def _lower_series(a: float, x: float) -> float:
    """P(a, x), the regularized lower incomplete gamma, by its series (x < a + 1)."""
    term = total = 1.0 / a
    k = a
    for _ in range(10_000):
        k += 1.0
        term *= x / k
        total += term
        if abs(term) < abs(total) * 1e-16:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _upper_fraction(a: float, x: float) -> float:
    """Q(a, x), the regularized upper incomplete gamma, by Lentz's continued fraction (x >= a + 1)."""
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def chi_square_sf(statistic: float, dof: int) -> float:
    """P[X >= statistic] for X ~ chi-square(dof): Q(dof/2, statistic/2)."""
    if statistic <= 0:
        return 1.0
    a, x = dof / 2.0, statistic / 2.0
    return 1.0 - _lower_series(a, x) if x < a + 1.0 else _upper_fraction(a, x)


def uniformity_p(values: np.ndarray, buckets: int = 256) -> float:
    """Pearson's goodness-of-fit p-value of ``values`` (ints in [0, buckets)) against uniform."""
    counts = np.bincount(values.ravel(), minlength=buckets).astype(np.float64)
    expected = counts.sum() / buckets
    return chi_square_sf(float(((counts - expected) ** 2 / expected).sum()), buckets - 1)


def homogeneity_p(first: np.ndarray, second: np.ndarray, buckets: int = 256) -> float:
    """Pearson's homogeneity p-value of two samples' bucket frequencies (2 x buckets table)."""
    table = np.stack([np.bincount(s.ravel(), minlength=buckets) for s in (first, second)]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    return chi_square_sf(float(((table - expected) ** 2 / expected).sum()), table.shape[1] - 1)


# --- the server's view -----------------------------------------------------------------------------


def _stripped_views(rnd: MemoryRound) -> dict[int, np.ndarray]:
    """Each survivor's masked vector with every mask the server can rebuild removed."""
    params = rnd.params
    ctx = {"session": params.session, "round_idx": params.round_idx}
    masked, adverts, shares = {}, {}, {}
    for stage, sender, data in rnd.server.transcript:
        body = bytes(data)[wire.HEADER.size :]
        if stage == stages.ADVERTISE_KEYS:
            adverts[sender] = body[32:64]
        elif stage == stages.MASKED_INPUT_COLLECTION:
            masked[sender] = masked_vector(params, bytes(data))
        elif stage == stages.UNMASKING:
            for peer, kind, share in revealed_shares(bytes(data)):
                shares.setdefault((kind, peer), {})[sender] = share
    dropped_keys = {}
    for (kind, peer), held in shares.items():
        if kind == wire.KIND_SK:
            secret = recover_secret(params, held)
            if secret is not None:
                dropped_keys[peer] = X25519PrivateKey.from_private_bytes(secret)
    views = {}
    for u, y in masked.items():
        b_seed = recover_secret(params, shares.get((wire.KIND_B, u), {}))
        if b_seed is None:
            continue
        pairwise = {
            w: pairwise_mask_key(key, adverts[u], id_lo=min(u, w), id_hi=max(u, w), **ctx)
            for w, key in dropped_keys.items()
            if w in rnd.graph.neighbours(u)
        }
        views[u] = unmask(params, y, u, b_seed, pairwise)
    return views


def _transcripts(threat_model: str, n: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Stripped views under zero inputs and under constant inputs, and those constant inputs."""
    t = honest_threshold(n, threat_model)
    views = []
    constant = {u: np.full(DIM, 0xAB000000 + 7 * u, dtype=np.uint32) for u in range(1, n + 1)}
    for inputs in ({u: np.zeros(DIM, dtype=np.uint32) for u in constant}, constant):
        rnd = MemoryRound(protocol_params(n, t, threat_model, dim=DIM), inputs=inputs)
        rnd.finish({stages.MASKED_INPUT_COLLECTION: {n}})
        views.append(_stripped_views(rnd))
    return views[0], views[1], constant


def _p_values(zero: dict[int, np.ndarray], const: dict[int, np.ndarray]) -> list[tuple[str, float]]:
    tests = []
    for name, views in (("zero", zero), ("constant", const)):
        for u, v in sorted(views.items()):
            tests.append((f"bytes of client {u} ({name} inputs)", uniformity_p(v.view(np.uint8))))
            tests.append((f"top bytes of client {u} ({name} inputs)", uniformity_p((v >> 24).astype(np.int64))))
    for u in sorted(set(zero) & set(const)):
        tests.append((f"client {u}: zero vs constant inputs", homogeneity_p(zero[u].view(np.uint8), const[u].view(np.uint8))))
    return tests


def _adjusted_minimum(tests: list[tuple[str, float]]) -> tuple[str, float, float]:
    name, p = min(tests, key=lambda item: item[1])
    return name, p, min(1.0, p * len(tests))


def transcript_distinguisher(threat_model: str, *, clients: int = 7, processes: bool = False) -> AttackResult:
    """Chi-square tests on the server's stripped view; BROKEN if two independent runs both reject."""
    n = clients
    zero, const, plain = _transcripts(threat_model, n)
    if not zero or not const:
        return AttackResult(
            "transcript-distinguisher", threat_model, BROKEN, "no survivor's view could be rebuilt",
            "the rounds did not complete, so there was nothing to test",
        )
    tests = _p_values(zero, const)
    name, p, adjusted = _adjusted_minimum(tests)
    power = uniformity_p(plain[1].view(np.uint8))
    confirmed = ""
    rejected = adjusted <= ALPHA
    if rejected:  # confirm on fresh transcripts before calling it a leak
        again = _p_values(*_transcripts(threat_model, n)[:2])
        name2, _, adjusted2 = _adjusted_minimum(again)
        rejected = adjusted2 <= ALPHA
        confirmed = f"; first run rejected ({name}), re-run min adjusted p = {adjusted2:.3g} ({name2})"
    figure = f"min p = {p:.3g} over {len(tests)} chi-square tests (Bonferroni-adjusted {adjusted:.3g}; reject <= {ALPHA:g})"
    explanation = (
        f"n={n}, d={DIM}, client {n} dropped; self masks and dropped peers' masks stripped as the server can; "
        f"smallest: {name}; the same test on an unmasked input gives p = {power:.3g}{confirmed}"
    )
    return AttackResult("transcript-distinguisher", threat_model, BROKEN if rejected else HOLDS, figure, explanation)
