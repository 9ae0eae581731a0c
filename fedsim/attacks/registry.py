"""The scenarios of ``fedsim attack``: names, threat models, what each does, what to expect.

One table (:data:`SCENARIOS`) is the single source for the command line (its ``--help``
and its exit code), for the tests (each asserts the expected verdict under each threat
model) and for the README's table of expected verdicts. Light: importing it loads no
torch (``fedsim --help`` lists the scenarios); a scenario's code is imported when it runs.

Verdicts are computed from what happened in the run, never written down: HOLDS when the
defence stopped the attack (and, where it applies, the round still completed with the
right sum and the attacker, not an honest client, was named), BROKEN when the attacker
got what it wanted (a victim's input reconstructed, a wrong sum released unnoticed, the
server process killed). ``expected`` says which verdict each threat model is documented
to give: ``dropout-lie`` and ``key-substitution`` are BROKEN under ``semi-honest`` by
design (that model trusts the server to follow the protocol: no PKI, no signed
ConsistencyCheck), and HOLD under ``active``; ``false-accusation`` is BROKEN under
``active`` by design (an accusation there carries no key the server could check, so the
accused honest client loses its round: availability, not privacy).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

from secagg.threat_models import (
    THREAT_MODELS,  # re-exported: secagg's one list, imports nothing
)

__all__ = [
    "BROKEN",
    "ERROR",
    "HOLDS",
    "SCENARIOS",
    "THREAT_MODELS",
    "VERDICTS",
    "AttackResult",
    "Scenario",
    "expected_table",
    "expected_verdict",
    "run_scenario",
    "scenario",
    "scenario_names",
]

logger = logging.getLogger(__name__)

HOLDS = "HOLDS"
"""The defence stopped the attack."""
BROKEN = "BROKEN"
"""The attacker got what it wanted."""
ERROR = "ERROR"
"""The scenario itself failed (a bug or an API it could not drive): never expected."""
VERDICTS: tuple[str, ...] = (HOLDS, BROKEN)


@dataclass(frozen=True)
class AttackResult:
    """What one scenario under one threat model did.

    ``verdict``: :data:`HOLDS` or :data:`BROKEN` (:data:`ERROR` if the scenario could not
    run); ``figure``: the measurement behind it (e.g. "victim's input recovered: max
    error 0"); ``explanation``: one line saying why, in the protocol's terms.
    """

    scenario: str
    threat_model: str
    verdict: str
    figure: str
    explanation: str

    def to_dict(self) -> dict[str, str]:
        """The row as JSON-ready fields (``expected`` added from the registry)."""
        return {
            "scenario": self.scenario,
            "threat_model": self.threat_model,
            "verdict": self.verdict,
            "expected": expected_verdict(self.scenario, self.threat_model),
            "figure": self.figure,
            "explanation": self.explanation,
        }


@dataclass(frozen=True)
class Scenario:
    """One named adversary.

    ``runner``: ``"module:function"`` under :mod:`fedsim.attacks`, called as
    ``function(threat_model, clients=..., processes=...)`` and returning an
    :class:`AttackResult`. ``expected``: the documented verdict per threat model.
    ``default_clients`` / ``max_clients``: the cohort size it uses, and the largest it
    accepts (the in-memory protocol rounds are O(n^2)). ``transport``: it has a
    ``--processes`` variant over real torch.distributed ranks.
    """

    name: str
    summary: str
    runner: str
    expected: tuple[tuple[str, str], ...]
    default_clients: int = 7
    max_clients: int = 32
    min_clients: int = 4
    transport: bool = False

    @property
    def threat_models(self) -> tuple[str, ...]:
        """The threat models it runs under (every one of :data:`THREAT_MODELS`)."""
        return tuple(model for model, _ in self.expected)

    def expected_under(self, threat_model: str) -> str:
        """The documented verdict under ``threat_model``."""
        return dict(self.expected)[threat_model]


def _both(verdict: str) -> tuple[tuple[str, str], ...]:
    return tuple((model, verdict) for model in THREAT_MODELS)


_BY_DESIGN = (("semi-honest", BROKEN), ("active", HOLDS))

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "dropout-lie",
        "the server tells two stories about who dropped: one group of clients hears the victim "
        "survived (they reveal shares of its self-mask seed b), the other that it dropped (they "
        "reveal shares of its mask key s^SK, and their pairwise mask keys with it, the victim "
        "having been relayed only their shares); with both it unmasks the victim's input. Run at "
        "the largest t the threat model's checks accept for which both stories fit (t <= (n + 1)/2 "
        "without signatures, t <= n/2 with them). BROKEN under semi-honest by design (no signed "
        "ConsistencyCheck); under active the signatures on one survivor set and t > (n + c)/2 stop it",
        "lies:dropout_lie",
        _BY_DESIGN,
    ),
    Scenario(
        "key-substitution",
        "the server replaces every peer's public keys in the victim's roster with keys of its own, "
        "decrypts the shares the victim encrypts to them, forges the shares the victim expects and "
        "removes every mask from the victim's input. BROKEN under semi-honest by design (the "
        "roster is trusted); under active each advert is signed with a PKI identity key",
        "lies:key_substitution",
        _BY_DESIGN,
    ),
    Scenario(
        "both-shares",
        "the server asks one client for both the b-share and the s^SK-share of one peer, six "
        "ways (one request with the peer in both lists, the peer's own s^SK-share, a second "
        "request either way round, overstated counts, unsorted lists), each in a fresh round; "
        "HOLDS if no client ever reveals both",
        "requests:both_shares",
        _both(HOLDS),
    ),
    Scenario(
        "replay",
        "messages replayed from another round, another session or another stage, or to another "
        "client, in both directions, plus share ciphertexts and (active) signatures from an "
        "earlier round; HOLDS if every replay is refused or rejected and every completed round "
        "sums exactly",
        "requests:replay",
        _both(HOLDS),
    ),
    Scenario(
        "partial-sum",
        "an honest server with real dropouts at the sized bound: for the (t, k) the sizing picks "
        "for n (SecAgg+ graph), many patterns of floor(max_dropout * n) dropped clients on fresh "
        "random graphs; a pattern leaks when the honest survivors split into parts (the server "
        "can unmask each part's sum) or a survivor is isolated; HOLDS if none leaks",
        "graph_leak:partial_sum",
        _both(HOLDS),
        default_clients=100,
        max_clients=100_000,
    ),
    Scenario(
        "bad-ciphertext",
        "one malicious client sends garbage share ciphertexts to every peer, to one peer or to "
        "just n - t peers (only t - 1 honest clients can then open its shares), misroutes them, "
        "or sends wrong channel-key checks for n - t + 1 peers, one round each; HOLDS if every "
        "round completes with the exact sum of the honest clients, the attacker is named in the "
        "rejections (a disputed key check cannot say who lied) and no honest client is",
        "bad_clients:bad_ciphertext",
        _both(HOLDS),
        transport=False,
    ),
    Scenario(
        "false-accusation",
        "a malicious client reports honest peers' shares as unopenable although they open (one "
        "peer, then n - t peers); HOLDS if every round completes with the exact sum, the accuser "
        "is named and no honest client is excluded. BROKEN under active by design: accusations "
        "carry no key there (the server may be the attacker), so the accused is excluded unverified",
        "bad_clients:false_accusation",
        (("semi-honest", HOLDS), ("active", BROKEN)),
    ),
    Scenario(
        "bad-share",
        "a holder reveals wrong shares in Unmasking (one b-share, all its shares, an s^SK-share "
        "of a dropped client, all its shares in a round left with t + 1 survivors: exactly t good "
        "shares of each secret); HOLDS if every round completes with the exact sum",
        "bad_clients:bad_share",
        _both(HOLDS),
    ),
    Scenario(
        "out-of-range-input",
        "a client skips the codec and masks a ring value outside the clip range: (n + 1) x clip "
        "on one coordinate (+5.0 at n = 4), 2^(k-1) on another (it wraps the ring); HOLDS if "
        "the decoded sum is flagged as out of range and not applied, while an honest round is not",
        "bad_clients:out_of_range_input",
        _both(HOLDS),
    ),
    Scenario(
        "oversize-message",
        "a client process sends a frame far larger than the stage's limit (and one whose header "
        "announces a huge body); HOLDS if the server drops and names that process and finishes "
        "the round with the others. In memory: the relay over real local sockets in threads; "
        "--processes: real torch.distributed ranks",
        "transport:oversize_message",
        _both(HOLDS),
        default_clients=2,
        max_clients=8,
        min_clients=2,
        transport=True,
    ),
    Scenario(
        "transcript-distinguisher",
        "statistics on the server's whole view: each masked vector against uniform ring "
        "elements (chi-square on byte and top-byte frequencies) and the masked vectors of two "
        "different inputs against each other (chi-square homogeneity); HOLDS if every p-value, "
        "Bonferroni-adjusted, stays above 0.001",
        "distinguisher:transcript_distinguisher",
        _both(HOLDS),
    ),
)

_BY_NAME = {s.name: s for s in SCENARIOS}


def scenario_names() -> tuple[str, ...]:
    """Every scenario's name, in table order."""
    return tuple(_BY_NAME)


def scenario(name: str) -> Scenario:
    """The scenario called ``name``; ValueError naming the allowed ones otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"scenario={name!r} is invalid: expected one of {', '.join(_BY_NAME)}") from None


def expected_verdict(name: str, threat_model: str) -> str:
    """The documented verdict of scenario ``name`` under ``threat_model``."""
    if threat_model not in THREAT_MODELS:
        raise ValueError(f"threat_model={threat_model!r} is invalid: expected one of {THREAT_MODELS}")
    return scenario(name).expected_under(threat_model)


def expected_table() -> str:
    """The expected verdicts as a Markdown table (scenario, one column per threat model,
    what it does), for the README: generated here so that it cannot drift from the tests."""
    head = "| scenario | " + " | ".join(f"`{m}`" for m in THREAT_MODELS) + " | what the adversary does |"
    rule = "|---|" + "---|" * len(THREAT_MODELS) + "---|"
    rows = [
        f"| `{s.name}` | " + " | ".join(s.expected_under(m) for m in THREAT_MODELS) + f" | {s.summary} |"
        for s in SCENARIOS
    ]
    return "\n".join([head, rule, *rows])


def run_scenario(name: str, threat_model: str, *, clients: int | None = None, processes: bool = False) -> AttackResult:
    """Run scenario ``name`` under ``threat_model`` against the real protocol.

    ``clients``: cohort size (default: the scenario's); ``processes``: the transport
    scenarios run over real torch.distributed processes (the others ignore it).
    ValueError for an unknown name, threat model or an out-of-range cohort.
    """
    spec = scenario(name)
    expected_verdict(name, threat_model)  # validates the threat model
    n = spec.default_clients if clients is None else clients
    if isinstance(n, bool) or not isinstance(n, int) or not spec.min_clients <= n <= spec.max_clients:
        raise ValueError(
            f"clients={n!r} is invalid for {name}: expected an int in [{spec.min_clients}, {spec.max_clients}]"
        )
    module_name, function_name = spec.runner.split(":")
    function = getattr(importlib.import_module(f"fedsim.attacks.{module_name}"), function_name)
    logger.info("attack %s under %s with %d clients", name, threat_model, n)
    result = function(threat_model, clients=n, processes=processes and spec.transport)
    if not isinstance(result, AttackResult) or result.verdict not in VERDICTS:
        raise TypeError(f"scenario {name} returned {result!r}, expected an AttackResult with a verdict in {VERDICTS}")
    return result
