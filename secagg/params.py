"""Round parameters, and the choice and validation of (threshold, neighbours).

:class:`ProtocolParams` is what every party of one round must agree on (the server
sends its digest in AdvertiseKeys; a client with other parameters refuses).

:func:`check_secagg_params` validates a threshold t and a graph degree k (None: the
complete graph of Bonawitz et al., CCS 2017; an even k: the random Harary graph of
Bell et al., CCS 2020) against the cohort size n, the collusion bound c (clients that
may collude with the server, chosen independently of the round's graph), a declared
bound ``max_dropout`` on *real* dropouts per round (a fraction of the cohort) and the
*injected* dropout rate delta (probability that a client drops at some point of the
round, independently).  Privacy uses rho = max(delta, max_dropout), i.e. up to
D = floor(rho * n) dropped clients; correctness uses delta only.  With the shares of
u's secrets held by N[u] = N(u) + {u} (k + 1 holders; all n for the complete graph):

- t >= 2 always: with t = 1 an honest server that hears from one survivor learns its
  update.
- privacy, complete graph (Bonawitz et al. 2017, Thm. 6.2, honest-but-curious):
  t >= c + 2.  The sum is released only when t survive; with c colluders among them,
  t = c + 1 leaves one honest update, which the colluders subtract out.
- privacy, sparse graph (Bell et al. 2020, Sec. 4): (a) the colluders among the k
  neighbours of any client stay <= t - 2, so every neighbourhood that reaches t
  survivors holds >= 2 honest clients (and colluders never reach t shares):
  n * P[Hypergeometric(n - 1, c, k) >= t - 1] <= 2^-SECURITY_BITS; (b) the honest
  survivors stay connected (else the server recovers the sum of each part):
  :func:`disconnection_bound` <= 2^-SECURITY_BITS with D + c clients removed.
- active threat model (Bonawitz et al. 2017, Sec. 6): t > (s + c') / 2, with s the
  neighbourhood size (n, or k + 1) and c' = c (complete) or min(c, k + 1) (sparse), so
  two stories about who dropped cannot both gather t honest ConsistencyCheck signatures.
- correctness (the round completes): every secret to reconstruct has t surviving
  holders among N[u] (u holds a share of its own); with each alive at Unmasking with
  probability 1 - delta, the failure probability n * P[Binomial(k + 1, 1 - delta) < t]
  (P[Binomial(n, 1 - delta) < t] for the complete graph, where all neighbourhoods
  coincide) is <= 2^-CORRECTNESS_BITS.
  This is availability, not privacy: it is sized on the injected rate only, so a
  small round with real dropouts aborts more often than that (a 4-client round cannot
  promise 2^-20 aborts at 10% real dropouts) but never releases an unsafe sum.

These are union bounds: the true failure probabilities are smaller.  The real-dropout
bound is declared, not enforced: a round where more than D clients really drop is
outside the guarantee (so are injected dropouts above floor(delta * n) in one round).
(a) and (b) assume the colluders and the dropouts do not depend on the graph; an active
server picks the session id the graph is derived from (:mod:`secagg.graph`) and who
"drops", hence the worst case c' = min(c, k + 1) in the active condition.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from dataclasses import dataclass

from secagg.encoding import SUPPORTED_MODULUS_BITS
from secagg.threat_models import THREAT_MODELS

__all__ = [
    "CORRECTNESS_BITS",
    "SECURITY_BITS",
    "SESSION_BYTES",
    "THREAT_MODELS",
    "ProtocolParams",
    "binomial_cdf_below",
    "check_secagg_params",
    "choose_secagg_params",
    "choose_threshold",
    "collusion_count",
    "disconnection_bound",
    "hypergeometric_tail",
    "removed_count",
    "smallest_safe_neighbours",
    "smallest_safe_threshold",
]

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
    low, high = max(0, t, draws - (population - marked)), min(marked, draws)
    return math.fsum(
        math.exp(_log_comb(marked, i) + _log_comb(population - marked, draws - i) - log_total)
        for i in range(low, high + 1)
    )


def disconnection_bound(n: int, degree: int, removed: int) -> float:
    """n * C(removed, k/2) / C(n, k/2): a union bound on the honest survivors of the
    Harary graph H(n, k) splitting when ``removed`` clients (dropped or colluding) are
    taken out (Bell et al., CCS 2020, Sec. 4).

    Ring positions come from a uniformly random permutation that the removed set does
    not depend on, so a given run of k/2 consecutive positions is all removed with
    probability C(removed, k/2) / C(n, k/2) (drawn without replacement; Bell et al.'s
    n * rho^(k/2) is its with-replacement form).  The survivors stay connected unless
    some such run is all removed (two are needed), whence the union over the n runs.
    """
    half = degree // 2
    if removed < half:
        return 0.0
    if removed >= n:
        return 1.0
    return min(1.0, n * math.exp(_log_comb(removed, half) - _log_comb(n, half)))


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


def removed_count(cohort: int, dropout_fraction: float, colluders: int) -> int:
    """Clients out of the honest survivors' graph: floor(rho * n) dropped plus the colluders."""
    return min(cohort, math.floor(dropout_fraction * cohort + 1e-9) + colluders)


def _check_probability(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"max_abort_probability must be a real in (0, 1), got {value!r}")
    return float(value)


def _check_rate(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a real in [0, 1), got {value!r}")
    return float(value)


def _check_dropout(dropout_rate: float) -> float:
    return _check_rate("dropout_rate", dropout_rate)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def _check_degree(n: int, neighbours: int | None) -> int | None:
    """The validated degree, or None for the complete graph (a degree >= n - 1 is complete)."""
    if neighbours is None:
        return None
    _check_int("neighbours", neighbours, 2, max(2, n - 1))
    if neighbours % 2 or neighbours > n - 1:
        raise ValueError(f"neighbours must be an even int in [2, {n - 1}] (cohort {n}), got {neighbours}")
    return neighbours if neighbours < n - 1 else None


# --- the conditions ----------------------------------------------------------------------

_SECURITY = 2.0**-SECURITY_BITS


def _size(n: int, k: int | None) -> int:
    return n if k is None else k + 1


def _active_floor(n: int, k: int | None, c: int) -> int:
    """The smallest t > (s + c') / 2 (Bonawitz et al. 2017, Sec. 6); on the sparse graph
    c' = min(c, k + 1): an active server may place every colluder in one neighbourhood."""
    s = _size(n, k)
    return (s + (c if k is None else min(c, s))) // 2 + 1


def _collusion_leak(n: int, k: int, c: int, t: int) -> float:
    """n * P[Hypergeometric(n - 1, c, k) >= t - 1]: colluders reach t - 1 among some N(u)."""
    return min(1.0, n * hypergeometric_tail(n - 1, c, k, t - 1)) if c else 0.0


def _abort_probability(n: int, k: int | None, delta: float, t: int) -> float:
    """Union bound on some secret lacking t surviving holders: the holders of u's
    secrets are N[u] (u holds a share of its own), each alive at Unmasking w.p. 1 - delta."""
    if k is None:
        return binomial_cdf_below(n, 1 - delta, t)
    return min(1.0, n * binomial_cdf_below(k + 1, 1 - delta, t))


def _first(low: int, high: int, holds) -> int | None:
    """The smallest x in [low, high] where ``holds`` (monotone: false, then true), or None."""
    if low > high or not holds(high):
        return None
    while low < high:
        mid = (low + high) // 2
        if holds(mid):
            high = mid
        else:
            low = mid + 1
    return low


def _safe_threshold(n: int, k: int | None, c: int, active: bool) -> int | None:
    low = max(2, c + 2 if k is None else 2, _active_floor(n, k, c) if active else 2)
    if k is None:
        return low if low <= n else None
    return _first(low, k + 1, lambda t: _collusion_leak(n, k, c, t) <= _SECURITY)


def _live_threshold(n: int, k: int | None, delta: float, abort: float) -> int:
    """The largest t whose abort probability is <= ``abort`` (0 if none)."""
    size = _size(n, k)
    last_dead = _first(1, size, lambda t: _abort_probability(n, k, delta, t) > abort)
    return size if last_dead is None else last_dead - 1


def _safe_degree(n: int, c: int, removed: int, active: bool) -> int | None:
    """The smallest even k < n - 1 with connected honest survivors and a safe threshold."""
    for k in range(2, n - 1, 2):
        if disconnection_bound(n, k, removed) <= _SECURITY and _safe_threshold(n, k, c, active) is not None:
            return k
    return None


def smallest_safe_threshold(cohort: int, neighbours: int | None, collusion: int | float, *, active: bool = False) -> int | None:
    """The smallest threshold meeting the privacy conditions (t >= 2; t >= c + 2 on the
    complete graph; the colluders-per-neighbourhood tail on the sparse one; t > (s + c')/2
    when ``active``), or None if no t <= the neighbourhood size does.  Found by scanning
    (bisection: each condition holds for every larger t once it holds)."""
    n = _check_int("cohort", cohort, 1, 10**7)
    return _safe_threshold(n, _check_degree(n, neighbours), collusion_count(n, collusion), _check_bool("active", active))


def smallest_safe_neighbours(
    cohort: int,
    collusion: int | float,
    *,
    dropout_rate: float = 0.0,
    max_dropout: float = 0.1,
    active: bool = False,
) -> int | None:
    """The smallest even degree k < n - 1 under which the honest survivors stay connected
    (:func:`disconnection_bound` with floor(rho * n) + c removed, rho = max(dropout_rate,
    max_dropout)) and some threshold is safe; None when only the complete graph is."""
    n = _check_int("cohort", cohort, 1, 10**7)
    c = collusion_count(n, collusion)
    rho = max(_check_dropout(dropout_rate), _check_rate("max_dropout", max_dropout))
    return _safe_degree(n, c, removed_count(n, rho, c), _check_bool("active", active))


# --- errors ------------------------------------------------------------------------------


def _degree_hint(n: int, c: int, removed: int, active: bool) -> str:
    k = _safe_degree(n, c, removed, active)
    if k is None:
        return f"no sparse degree is safe for cohort {n}: use the complete graph"
    return f"the smallest safe neighbours is {k}"


def _threshold_hint(n: int, k: int | None, c: int, removed: int, active: bool) -> str:
    low = _safe_threshold(n, k, c, active)
    if low is not None:
        return f"the smallest safe threshold is {low}"
    return f"no threshold is safe: {_no_safe_threshold(n, k, c, removed, active)}"


def _no_safe_threshold(n: int, k: int | None, c: int, removed: int, active: bool) -> str:
    """Why no threshold at all is safe for this graph, naming the field to change first."""
    if k is None:
        need = f"t >= c + 2 = {c + 2}" + (f" and t > (n + c) / 2 = {(n + c) / 2:g}" if active else "")
        return f"collusion={c} is too large for cohort {n}: the complete graph needs {need}, and t <= {n}"
    if active and _active_floor(n, k, c) > k + 1:
        why = f"the active threat model needs t > (k + 1 + min(c, k + 1)) / 2 = {(k + 1 + min(c, k + 1)) / 2:g}"
    else:
        why = f"the colluders among some client's {k} neighbours reach t - 1 for every t"
    return (
        f"neighbours={k} is too small: with collusion={c} and cohort {n} no threshold up to k + 1 = {k + 1} "
        f"is safe ({why}); {_degree_hint(n, c, removed, active)}"
    )


def _setting(n: int, k: int | None, c: int) -> str:
    graph = "the complete graph" if k is None else f"neighbours={k}"
    return f"with collusion={c}, {graph} and cohort {n}"


def _privacy_error(n: int, t: int, k: int | None, c: int, rho: float, active: bool) -> str | None:
    """Why (t, k) is unsafe for privacy, naming the field first, or None."""
    removed = removed_count(n, rho, c)
    if t < 2:
        return (
            f"threshold={t} is too small: an honest server that hears from one survivor learns its update; "
            f"{_setting(n, k, c)} {_threshold_hint(n, k, c, removed, active)}"
        )
    if k is not None:
        split = disconnection_bound(n, k, removed)
        if split > _SECURITY:
            return (
                f"neighbours={k} is too small: with up to {removed - c} dropped (max dropout {rho:g} of cohort {n}) "
                f"and collusion={c}, the honest survivors may split into parts whose sums the server learns "
                f"(probability up to {split:.3g} > 2^-{SECURITY_BITS}); {_degree_hint(n, c, removed, active)}"
            )
    if _safe_threshold(n, k, c, active) is None:
        return _no_safe_threshold(n, k, c, removed, active)
    if k is None and t <= c + 1:
        return (
            f"threshold={t} is too small: {_setting(n, k, c)} {_threshold_hint(n, k, c, removed, active)} "
            f"(t = c + 1 releases one update)"
        )
    if k is not None:
        leak = _collusion_leak(n, k, c, t)
        if leak > _SECURITY:
            return (
                f"threshold={t} is too small: the colluders among some client's {k} neighbours reach t - 1 = {t - 1} "
                f"(a neighbourhood of t survivors with one honest client) with probability up to {leak:.3g} > "
                f"2^-{SECURITY_BITS}; {_setting(n, k, c)} {_threshold_hint(n, k, c, removed, active)}"
            )
    if active and t < _active_floor(n, k, c):
        s = _size(n, k)
        return (
            f"threshold={t} is too small for the active threat model: t must exceed (s + c) / 2 = "
            f"{(s + (c if k is None else min(c, s))) / 2:g} (neighbourhood of {s}) so two stories about who dropped "
            f"cannot both gather t honest signatures; {_setting(n, k, c)} {_threshold_hint(n, k, c, removed, active)}"
        )
    return None


# --- check and choice --------------------------------------------------------------------


def _checked_setting(
    cohort: int, dropout_rate: float, max_dropout: float, collusion: int | float, active: bool, abort: float
) -> tuple[int, float, float, int, bool, float]:
    """(n, injected rate, privacy rate rho = max(injected, max_dropout), colluders, active,
    abort bound), each checked (ValueError naming the field)."""
    n = _check_int("cohort", cohort, 1, 10**7)
    delta = _check_dropout(dropout_rate)
    rho = max(delta, _check_rate("max_dropout", max_dropout))
    return n, delta, rho, collusion_count(n, collusion), _check_bool("active", active), _check_probability(abort)


def check_secagg_params(
    cohort: int,
    threshold: int,
    neighbours: int | None,
    dropout_rate: float,
    collusion: int | float,
    *,
    max_abort_probability: float = 2.0**-CORRECTNESS_BITS,
    max_dropout: float = 0.1,
    active: bool = False,
) -> None:
    """Raise ValueError unless (t, k) meets the module's conditions; the message names the
    field (``threshold=`` or ``neighbours=`` first), its value and the smallest (or
    largest) accepted value.

    ``collusion``: an int (clients colluding with the server) or a float in [0, 1) (a
    fraction of the cohort).  ``dropout_rate``: the injected rate; ``max_dropout``: the
    declared bound on real dropouts per round, a fraction of the cohort (privacy is
    sized on the larger).  ``active``: the active threat model's t > (s + c) / 2.
    ``max_abort_probability`` replaces the 2^-20 correctness bound, which is sized on
    ``dropout_rate`` only: availability, not privacy (small cohorts with injected
    dropouts cannot meet it: a 4-client round at 10% dropout aborts ~0.4% of the time
    at t = 2, ~5% at t = 3; a round with real dropouts may abort, it never releases an
    unsafe sum).
    """
    n, delta, rho, c, active, correctness = _checked_setting(
        cohort, dropout_rate, max_dropout, collusion, active, max_abort_probability
    )
    k = _check_degree(n, neighbours)
    t = _check_int("threshold", threshold, 1, _size(n, k))
    reason = _privacy_error(n, t, k, c, rho, active)
    if reason is not None:
        raise ValueError(reason)
    fail = _abort_probability(n, k, delta, t)
    if fail > correctness:
        live, low = _live_threshold(n, k, delta, correctness), _safe_threshold(n, k, c, active)
        hint = (
            f"the largest threshold meeting it is {live}"
            if low is not None and live >= low
            else f"no safe threshold (>= {low}) meets it: lower dropout_rate"
            + (" or raise neighbours" if k is not None else "")
        )
        raise ValueError(
            f"threshold={t} is too large: fewer than t holders survive with probability up to {fail:.3g} > "
            f"max_abort_probability={correctness:.3g} at dropout_rate={delta}; {hint}"
        )


def choose_threshold(
    cohort: int,
    neighbours: int | None,
    dropout_rate: float,
    collusion: int | float,
    *,
    max_abort_probability: float = 2.0**-CORRECTNESS_BITS,
    max_dropout: float = 0.1,
    active: bool = False,
) -> int:
    """The threshold for a given graph: an honest majority of the neighbourhood (more
    than (s + c) / 2 when ``active``), raised to the smallest safe one, lowered to the
    largest that meets ``max_abort_probability`` when it must (never below the smallest
    safe one).  ValueError naming ``neighbours=`` first when the degree is the problem
    (so a caller can blame the degree, not an unset threshold)."""
    n, delta, rho, c, active, abort = _checked_setting(
        cohort, dropout_rate, max_dropout, collusion, active, max_abort_probability
    )
    k = _check_degree(n, neighbours)
    low = _safe_threshold(n, k, c, active)
    if low is None or (k is not None and disconnection_bound(n, k, removed_count(n, rho, c)) > _SECURITY):
        raise ValueError(_privacy_error(n, 2 if low is None else low, k, c, rho, active))
    preferred = max(low, _size(n, k) // 2 + 1)
    live = _live_threshold(n, k, delta, abort)
    if live >= low:
        return min(preferred, live)
    where = f"cohort={n}" if k is None else f"neighbours={k}, cohort={n}"
    raise ValueError(
        ("no threshold fits " if k is None else f"neighbours={k} leaves no threshold that fits: ")
        + f"{where}, dropout_rate={delta}, collusion={c}: the smallest safe threshold is {low} and fewer than "
        f"{low} holders survive with probability up to {_abort_probability(n, k, delta, low):.3g} > {abort:.3g}; "
        "lower dropout_rate or collusion, grow the cohort"
        + (", raise neighbours" if k is not None else "")
        + " or accept more aborted rounds (max_abort_probability)"
    )


def choose_secagg_params(
    cohort: int,
    dropout_rate: float,
    collusion: int | float,
    graph: str = "full",
    *,
    max_abort_probability: float = 2.0**-CORRECTNESS_BITS,
    max_dropout: float = 0.1,
    active: bool = False,
) -> tuple[int, int | None]:
    """(threshold, neighbours) meeting :func:`check_secagg_params`.

    ``graph="full"``: the complete graph, neighbours None, threshold from
    :func:`choose_threshold` (an honest majority max(c + 2, n // 2 + 1); more than
    (n + c) / 2 when ``active``).  ``graph="sparse"``: the smallest even degree k
    (SecAgg+, O(log n)) whose honest survivors stay connected after floor(rho * n) real
    or injected dropouts plus the colluders (rho = max(dropout_rate, max_dropout)) and
    that has a threshold that fits; if only k >= n - 1 works the complete graph is
    returned (neighbours None).  Raises ValueError when nothing fits.
    """
    n, delta, rho, c, active, abort = _checked_setting(
        cohort, dropout_rate, max_dropout, collusion, active, max_abort_probability
    )
    if graph not in ("full", "sparse"):
        raise ValueError(f"graph must be 'full' or 'sparse', got {graph!r}")
    options = dict(max_abort_probability=abort, max_dropout=max_dropout, active=active)
    if graph == "sparse":
        removed = removed_count(n, rho, c)
        for k in range(2, n - 1, 2):
            if disconnection_bound(n, k, removed) > _SECURITY or _safe_threshold(n, k, c, active) is None:
                continue
            try:
                return choose_threshold(n, k, delta, c, **options), k
            except ValueError:
                continue
    return choose_threshold(n, None, delta, c, **options), None
