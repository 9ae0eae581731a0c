"""Round parameters, and the choice and validation of (threshold, neighbours).

:class:`ProtocolParams` is what every party of one round must agree on (the server
sends its digest in AdvertiseKeys; a client with other parameters refuses).

:func:`check_secagg_params` validates a threshold t and a graph degree k (None: the
complete graph of Bonawitz et al., CCS 2017; an even k: the random Harary graph of
Bell et al., CCS 2020) against the cohort size n, the expected dropout rate delta
(probability that a client drops at some point of the round, independently) and the
collusion bound c (clients that may collude with the server; chosen independently of
the round's graph).  The conditions, with a neighbourhood of u being N(u) and the
shares of u's secrets held by N[u] = N(u) + {u}:

- privacy, complete graph (Bonawitz et al. 2017, Thm. 6.2, honest-but-curious):
  t > c, so the colluders' shares never reach the threshold;
- privacy, sparse graph (Bell et al. 2020, Sec. 4): the colluders among the k
  neighbours of any honest client stay below t except with probability
  n * P[Hypergeometric(n - 1, c, k) >= t] <= 2^-SECURITY_BITS; and the honest
  survivors stay connected (else the server learns sums of parts of them): in the
  Harary graph the rest stays connected unless a run of k/2 consecutive ring
  positions is all removed, probability <= n * (delta + c/n)^(k/2) <= 2^-SECURITY_BITS;
- correctness (the round completes): every secret to reconstruct has t surviving
  holders; with a holder surviving with probability 1 - delta, the failure
  probability n * P[Binomial(k, 1 - delta) < t] (P[Binomial(n - 1, 1 - delta) < t]
  for the complete graph, where all neighbourhoods coincide) is <= 2^-CORRECTNESS_BITS.

These are union bounds: the true failure probabilities are smaller.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from dataclasses import dataclass

from secagg.encoding import SUPPORTED_MODULUS_BITS

__all__ = [
    "CORRECTNESS_BITS",
    "SECURITY_BITS",
    "SESSION_BYTES",
    "THREAT_MODELS",
    "ProtocolParams",
    "binomial_cdf_below",
    "check_secagg_params",
    "choose_secagg_params",
    "collusion_count",
    "disconnection_bound",
    "hypergeometric_tail",
]

THREAT_MODELS: tuple[str, ...] = ("semi-honest", "active")
"""``semi-honest``: the server follows the protocol (it may be curious and collude with
up to c clients); clients may be malicious. ``active``: the server may also deviate
(substitute keys, lie about who dropped); clients need a PKI."""

SESSION_BYTES: int = 16
"""A session id is 128 random bits chosen by the server per run."""

SECURITY_BITS: int = 40
"""Statistical security: privacy may fail with probability at most 2^-40."""

CORRECTNESS_BITS: int = 20
"""A round may abort for lack of survivors with probability at most 2^-20."""

_MAX_U64 = 2**64 - 1
_MAX_BODY = 2**32 - 1


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return value


@dataclass(frozen=True)
class ProtocolParams:
    """Parameters of one round, identical at the server and every client.

    ``session``: 16 random bytes chosen by the server per run; ``round_idx`` >= 1;
    ``client_ids``: the cohort, a sorted tuple of distinct ints >= 1; ``dim``: ring
    elements per input; ``threshold``: Shamir t per neighbourhood (of N[u], k + 1
    holders, or all n for the complete graph); ``modulus_bits``: 32 or 64;
    ``neighbours``: SecAgg+ degree k (even) or None for the complete graph;
    ``consistency_check``: run the Ed25519 ConsistencyCheck stage; ``active``: the
    active-server threat model (:data:`THREAT_MODELS`): clients check every advertised
    key against a PKI and the ConsistencyCheck runs, so it requires ``consistency_check``.
    Validated on construction (:meth:`validate`).
    """

    session: bytes
    round_idx: int
    client_ids: tuple[int, ...]
    dim: int
    threshold: int
    modulus_bits: int = 32
    neighbours: int | None = None
    consistency_check: bool = False
    active: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @property
    def neighbourhood_size(self) -> int:
        """Holders of one client's shares: k + 1, or n for the complete graph."""
        n = len(self.client_ids)
        return n if self.neighbours is None else min(n, self.neighbours + 1)

    @property
    def word_bytes(self) -> int:
        """Bytes per ring element."""
        return self.modulus_bits // 8

    def validate(self) -> None:
        """Raise ValueError naming the field, its value and the allowed range."""
        if not isinstance(self.session, bytes) or len(self.session) != SESSION_BYTES:
            got = (
                len(self.session)
                if isinstance(self.session, (bytes, bytearray))
                else type(self.session).__name__
            )
            raise ValueError(f"session must be {SESSION_BYTES} bytes, got {got}")
        _check_int("round_idx", self.round_idx, 1, _MAX_U64)
        ids = self.client_ids
        if not isinstance(ids, tuple) or not ids:
            raise ValueError(f"client_ids must be a non-empty tuple of ints, got {ids!r}")
        if not all(type(u) is int and 1 <= u <= _MAX_U64 for u in ids):
            i, u = next((i, u) for i, u in enumerate(ids) if not (type(u) is int and 1 <= u <= _MAX_U64))
            raise ValueError(f"client_ids[{i}] must be an int in [1, {_MAX_U64}], got {u!r}")
        for a, b in zip(ids, ids[1:]):
            if b <= a:
                raise ValueError(f"client_ids must be sorted and distinct, got {a} before {b}")
        if self.modulus_bits not in SUPPORTED_MODULUS_BITS:
            raise ValueError(
                f"modulus_bits must be one of {SUPPORTED_MODULUS_BITS}, got {self.modulus_bits!r}"
            )
        _check_int("dim", self.dim, 1, _MAX_BODY // self.word_bytes)
        n = len(ids)
        if self.neighbours is not None:
            _check_int("neighbours", self.neighbours, 2, max(2, n - 1))
            if self.neighbours % 2 or self.neighbours > n - 1:
                raise ValueError(f"neighbours must be an even int in [2, {n - 1}], got {self.neighbours}")
        _check_int("threshold", self.threshold, 1, self.neighbourhood_size)
        if not isinstance(self.consistency_check, bool):
            raise ValueError(f"consistency_check must be a bool, got {self.consistency_check!r}")
        if not isinstance(self.active, bool):
            raise ValueError(f"active must be a bool, got {self.active!r}")
        if self.active and not self.consistency_check:
            raise ValueError("active=True requires consistency_check=True (the active threat model signs the survivor set)")

    def digest(self) -> bytes:
        """SHA-256 of all fields (fixed-width encoding): equal iff the parameters are equal.

        Computed once per object (the parameters are frozen; virtual clients share them)."""
        return self._digest

    @functools.cached_property
    def _digest(self) -> bytes:
        fields = struct.pack(
            f">Q{len(self.client_ids)}QQQBQBB",
            len(self.client_ids),
            *self.client_ids,
            self.dim,
            self.threshold,
            self.modulus_bits,
            0 if self.neighbours is None else self.neighbours,
            int(self.consistency_check),
            int(self.active),
        )
        return hashlib.sha256(
            b"secagg/v1/params" + self.session + struct.pack(">Q", self.round_idx) + fields
        ).digest()


# --- probability bounds ----------------------------------------------------------------


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def binomial_cdf_below(trials: int, p: float, t: int) -> float:
    """P[Binomial(trials, p) < t], summed in log space (no overflow at large ``trials``)."""
    if p <= 0.0:
        return 1.0 if t > 0 else 0.0
    if p >= 1.0:
        return 1.0 if t > trials else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    return math.fsum(
        math.exp(_log_comb(trials, i) + i * log_p + (trials - i) * log_q)
        for i in range(0, min(t, trials + 1))
    )


def hypergeometric_tail(population: int, marked: int, draws: int, t: int) -> float:
    """P[X >= t] for X ~ Hypergeometric(population, marked, draws): t marked among draws."""
    log_total = _log_comb(population, draws)
    low, high = max(t, draws - (population - marked)), min(marked, draws)
    return math.fsum(
        math.exp(_log_comb(marked, i) + _log_comb(population - marked, draws - i) - log_total)
        for i in range(low, high + 1)
    )


def disconnection_bound(n: int, degree: int, removed_fraction: float) -> float:
    """n * rho^(k/2): a union bound on some run of k/2 consecutive ring positions of the
    Harary graph being all removed, each independently with probability rho (the honest
    survivors can only disconnect when two such runs exist)."""
    return min(1.0, n * removed_fraction ** (degree // 2))


def collusion_count(cohort: int, collusion: int | float) -> int:
    """The collusion bound as a count: an int is a count of clients, a float in [0, 1)
    a fraction of the cohort (rounded up)."""
    if isinstance(collusion, bool) or not isinstance(collusion, (int, float)):
        raise ValueError(f"collusion must be an int count or a float fraction, got {collusion!r}")
    if isinstance(collusion, float):
        if not 0.0 <= collusion < 1.0:
            raise ValueError(f"collusion as a fraction must be in [0, 1), got {collusion}")
        return math.ceil(collusion * cohort)
    return _check_int("collusion", collusion, 0, cohort - 1)


def _check_probability(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"max_abort_probability must be a real in (0, 1), got {value!r}")
    return float(value)


def _check_dropout(dropout_rate: float) -> float:
    if (
        isinstance(dropout_rate, bool)
        or not isinstance(dropout_rate, (int, float))
        or not 0 <= dropout_rate < 1
    ):
        raise ValueError(f"dropout_rate must be a real in [0, 1), got {dropout_rate!r}")
    return float(dropout_rate)


def check_secagg_params(
    cohort: int,
    threshold: int,
    neighbours: int | None,
    dropout_rate: float,
    collusion: int | float,
    *,
    max_abort_probability: float = 2.0**-CORRECTNESS_BITS,
) -> None:
    """Raise ValueError (field, value, allowed range) unless (t, k) meets the module's conditions.

    ``collusion``: an int (clients colluding with the server) or a float in [0, 1) (a
    fraction of the cohort).  ``max_abort_probability`` replaces the 2^-20 correctness
    bound (small cohorts with dropouts cannot meet it: a 4-client round at 10% dropout
    aborts ~3% of the time whatever t >= 2).
    """
    n = _check_int("cohort", cohort, 1, 10**7)
    delta = _check_dropout(dropout_rate)
    c = collusion_count(n, collusion)
    if neighbours is not None:
        _check_int("neighbours", neighbours, 2, max(2, n - 1))
        if neighbours % 2 or neighbours > n - 1:
            raise ValueError(f"neighbours must be an even int in [2, {n - 1}] (cohort {n}), got {neighbours}")
    sparse = neighbours is not None and neighbours < n - 1
    size = neighbours + 1 if sparse else n
    t = _check_int("threshold", threshold, 1, size)
    if not sparse and t <= c:
        raise ValueError(
            f"threshold must be > collusion = {c} so colluders hold fewer than t shares, got {t} "
            f"(allowed: [{c + 1}, {size}])"
        )
    security = 2.0**-SECURITY_BITS
    correctness = _check_probability(max_abort_probability)
    if sparse:
        k = neighbours
        leak = n * hypergeometric_tail(n - 1, c, k, t) if c else 0.0
        if leak > security:
            raise ValueError(
                f"threshold={t} with neighbours={k}: colluders reach t shares in some neighbourhood "
                f"with probability up to {leak:.3g} > 2^-{SECURITY_BITS}; raise threshold or neighbours"
            )
        split = disconnection_bound(n, k, min(1.0, delta + c / n))
        if split > security:
            raise ValueError(
                f"neighbours={k}: honest survivors may split into parts (probability up to {split:.3g} "
                f"> 2^-{SECURITY_BITS}) with dropout_rate={delta} and collusion={c}; raise neighbours"
            )
        fail = n * binomial_cdf_below(k, 1 - delta, t)
    else:
        fail = binomial_cdf_below(n - 1, 1 - delta, t)
    if fail > correctness:
        raise ValueError(
            f"threshold={t}: fewer than t holders survive with probability up to {fail:.3g} > "
            f"max_abort_probability={correctness:.3g} at dropout_rate={delta}; lower threshold"
            + ("" if not sparse else " or raise neighbours")
        )


def _preferred_threshold(size: int, c: int, sparse: bool) -> int:
    """An honest majority of the neighbourhood (and more than the colluders, complete graph)."""
    return size // 2 + 1 if sparse else max(c + 1, size // 2 + 1)


def _threshold_for(n: int, neighbours: int | None, delta: float, c: int, abort: float) -> int | None:
    """The preferred threshold if it passes, else the largest passing one > c, else None."""
    sparse = neighbours is not None
    size = neighbours + 1 if sparse else n
    candidates = [_preferred_threshold(size, c, sparse)] + list(range(size, 0 if sparse else c, -1))
    for t in candidates:
        if t > size:
            continue
        try:
            check_secagg_params(n, t, neighbours, delta, c, max_abort_probability=abort)
        except ValueError:
            continue
        return t
    return None


def choose_secagg_params(
    cohort: int,
    dropout_rate: float,
    collusion: int | float,
    graph: str = "full",
    *,
    max_abort_probability: float = 2.0**-CORRECTNESS_BITS,
) -> tuple[int, int | None]:
    """(threshold, neighbours) meeting :func:`check_secagg_params`.

    ``graph="full"``: the complete graph, neighbours None; the threshold is an honest
    majority max(c + 1, n // 2 + 1) when that survives the dropouts, else the largest
    that does.  ``graph="sparse"``: the smallest even degree k (SecAgg+, O(log n)) with
    a valid threshold (chosen the same way within N[u]); if only k >= n - 1 works the
    complete graph is returned (neighbours None).  Raises ValueError when nothing fits.
    ``max_abort_probability`` as in :func:`check_secagg_params`.
    """
    abort = _check_probability(max_abort_probability)
    n = _check_int("cohort", cohort, 1, 10**7)
    delta = _check_dropout(dropout_rate)
    c = collusion_count(n, collusion)
    if graph not in ("full", "sparse"):
        raise ValueError(f"graph must be 'full' or 'sparse', got {graph!r}")
    if graph == "sparse":
        for k in range(2, n - 1, 2):
            t = _threshold_for(n, k, delta, c, abort)
            if t is not None:
                return t, k
    t = _threshold_for(n, None, delta, c, abort)
    if t is None:
        raise ValueError(
            f"no threshold fits cohort={n}, dropout_rate={delta}, collusion={c}: need t > {c} and "
            f"P[fewer than t of {n - 1} peers survive] <= {abort:.3g}; "
            f"lower dropout_rate or collusion, or grow the cohort"
        )
    return t, None
