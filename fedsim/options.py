"""Every run option in one table: field → command-line option, short help, allowed values.

One row per :class:`~fedsim.config.RunConfig` field. Validation reads a row's :class:`Rule`
(its check, and the "expected …" text an error shows); ``fedsim run`` generates its options
from the rows that have help (``cli/run.py``), adding each row's default from ``RunConfig``
and its allowed values to ``--help``. Adding a run option is one ``RunConfig`` field plus one
row here. Checks that relate two fields (a population of at least ``num_clients``, a degree
only for the sparse graph, …) are written out in :func:`fedsim.config.validate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from fedsim.methods.registry import METHOD_NAMES, SMOOTHING_MODES
from fedsim.presets import PRESET_NAMES
from fedsim.transport.vocabulary import DROPOUT_STAGES
from secagg.threat_models import THREAT_MODELS

__all__ = [
    "BUNDLED_TEXT_MODEL",
    "COHORTS",
    "DEVICES",
    "FIELD_OPTIONS",
    "IMAGE_DATASETS",
    "OPTIMIZERS",
    "PARTITIONS",
    "SECAGG_GRAPHS",
    "SECAGG_MODULUS_BITS",
    "SECAGG_THREAT_MODELS",
    "SMOOTHING_MODES",
    "TEXT_DATASETS",
    "FieldOption",
    "Rule",
]

COHORTS = ("all", "poisson", "fixed")
SECAGG_GRAPHS = ("full", "sparse")
SECAGG_MODULUS_BITS = (32, 64)
SECAGG_THREAT_MODELS = THREAT_MODELS
PARTITIONS = ("iid", "dirichlet")
OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
BUNDLED_TEXT_MODEL = "all-MiniLM-L6-v2"
TEXT_DATASETS = ("wordnet-supersenses",)
IMAGE_DATASETS = ("digits", "fashion-mnist")


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Rule:
    """What a field accepts: ``check(value)`` and the text an error shows after "expected"."""

    check: Callable[[Any], bool]
    allowed: str


def integers(low: int, high: int | None = None) -> Rule:
    """An integer in [low, high] (or >= low)."""
    if high is None:
        return Rule(lambda v: is_int(v) and v >= low, f"an integer >= {low}")
    return Rule(lambda v: is_int(v) and low <= v <= high, f"an integer in [{low}, {high}]")


def optional(rule: Rule, none: str = "None or ") -> Rule:
    """``rule`` or None."""
    return Rule(lambda v: v is None or rule.check(v), none + rule.allowed)


def one_of(choices: tuple) -> Rule:
    return Rule(lambda v: v in choices, f"one of {choices}")


def reals(allowed: str, check: Callable[[float], bool]) -> Rule:
    """A finite number for which ``check`` holds."""
    return Rule(lambda v: is_real(v) and check(v), allowed)


ANY = Rule(lambda v: True, "any value")


def _is_name_list(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) > 0 and all(isinstance(t, str) and t.strip() for t in value) and len(set(value)) == len(value)


@dataclass(frozen=True)
class FieldOption:
    """One run option: its field, allowed values, and how ``fedsim run`` offers it.

    ``help``: the option's one-line help ("" for a field set only in a config file);
    ``flags``: its names on the command line (default ``--field-name``); ``cli_type``: what
    the option parses (str for lists and count-or-fraction values, which the config parses);
    ``show_default``: append "(default: …)" from ``RunConfig`` to the help.
    """

    field: str
    rule: Rule
    help: str = ""
    flags: tuple[str, ...] = ()
    cli_type: type = str
    show_default: bool = True


_THRESHOLD = Rule(
    lambda v: v is None or (is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1),
    "None (chosen for the cohort), a count >= 1, or a fraction in (0, 1] of each neighbourhood",
)
_COLLUSION = Rule(
    lambda v: (is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v < 1),
    "a count >= 0 of clients colluding with the server, or a fraction in [0, 1) of the cohort",
)
_STAGES = Rule(
    lambda v: len(v) > 0 and all(s in DROPOUT_STAGES for s in v) and len(set(v)) == len(v),
    f"a non-empty list of distinct stages from {DROPOUT_STAGES}",
)

FIELD_OPTIONS: tuple[FieldOption, ...] = (
    FieldOption("preset", optional(one_of(PRESET_NAMES), none="None or "),
                "Start from a paper's setup (fedsim.presets; `fedsim run --list-presets`): la-lora-swin-b-cifar100, la-lora-roberta-mnli, deer-vit-b16 or default. A config file overrides it, options override both; the resolved config records it.",
                show_default=False),
    FieldOption("methods", Rule(lambda v: isinstance(v, tuple) and len(v) > 0 and all(m in METHOD_NAMES for m in v), f"a non-empty list drawn from {METHOD_NAMES}"),
                "Comma-separated methods to compare: la-lora (factors alternate per step + smoothing), dp-lora (A and B together), ffa-lora (A frozen), rolora (factors alternate per round), deer (B then A each round, two secure sums; noise regulator under client-level DP).",
                flags=("--method", "-m")),
    FieldOption("dataset", ANY, "wordnet-supersenses (bundled text), digits (scikit-learn), fashion-mnist (Debian package), csv:PATH (text,label) or imagefolder:PATH."),
    FieldOption("model", Rule(lambda v: isinstance(v, str) and v != "", "a model name or path"),
                "Text: all-MiniLM-L6-v2 (bundled weights) or a transformers checkpoint/dir. Images: a timm ViT or Swin name."),
    FieldOption("pretrained", Rule(lambda v: isinstance(v, bool), "true or false"),
                "Start from pretrained weights (timm needs a model hub).", flags=("--pretrained/--random-init",), cli_type=bool, show_default=False),
    FieldOption("img_size", integers(8, 1024), "Image side in pixels for timm models.", cli_type=int),
    FieldOption("limit", optional(integers(10)), "Use at most this many training examples (stratified).", cli_type=int),
    FieldOption("num_clients", integers(1, 1024), "Number of client processes (default 4; under torchrun: WORLD_SIZE - 1).",
                flags=("--clients", "-n"), cli_type=int, show_default=False),
    FieldOption("population", ANY, "Virtual clients, hosted round-robin by the client processes (default: one per process).", cli_type=int, show_default=False),
    FieldOption("cohort", one_of(COHORTS), "Who trains each round: all, poisson (each client w.p. --cohort-rate; client-level DP amplified by q) or fixed (--cohort-size at random; no amplification claimed)."),
    FieldOption("cohort_rate", reals("a number in (0, 1]", lambda v: 0 < v <= 1), "Poisson cohort rate q.", cli_type=float),
    FieldOption("cohort_size", ANY, "Fixed cohort size m.", cli_type=int, show_default=False),
    FieldOption("client_noise_multiplier", reals("a number in [0, 1000] (0 disables client-level DP)", lambda v: 0 <= v <= 1000),
                "Client-level DP noise z (0 = off), the Skellam mechanism (Agarwal et al. 2021): each cohort member clips its whole update to --client-clip S, scales, rotates and rounds it to integers and adds its share of integer Skellam noise before masking; the secure sum carries noise of variance (z·S)² in the update's units. `fedsim run --dry-run` shows the scale, the rounded sensitivity and the ring's wrap bound.",
                flags=("--client-noise-multiplier", "--client-sigma"), cli_type=float),
    FieldOption("client_clip", reals("a number in (0, 1e6]", lambda v: 0 < v <= 1e6), "Client-level clipping norm S of a whole update.", cli_type=float),
    FieldOption("rounds", integers(1, 100_000), "Communication rounds.", flags=("--rounds", "-r"), cli_type=int),
    FieldOption("local_steps", integers(1, 100_000), "DP-SGD steps per client per round (K).", flags=("--local-steps", "-k"), cli_type=int),
    FieldOption("local_epochs", optional(reals("a number in (0, 1000]", lambda v: 0 < v <= 1000), none="None (use --local-steps) or "),
                "Instead of K: each client runs ceil(epochs·n_i/B) DP-SGD steps per round (n_i its records, B --batch-size), split over the round's phases.",
                cli_type=float, show_default=False),
    FieldOption("batch_size", integers(1, 65536), "Expected batch size B; Poisson sampling rate q = B / n_i.", cli_type=int),
    FieldOption("noise_multiplier", reals("a number in (0, 1000]", lambda v: 0 < v <= 1000), "Gaussian noise σ, in units of the clipping norm.", flags=("--noise-multiplier", "--sigma"), cli_type=float),
    FieldOption("max_grad_norm", reals("a number in (0, 1e6]", lambda v: 0 < v <= 1e6), "Per-sample clipping norm C.", flags=("--max-grad-norm", "--clip"), cli_type=float),
    FieldOption("delta", reals("a number in (0, 1)", lambda v: 0 < v < 1), "δ at which ε is reported.", cli_type=float),
    FieldOption("target_epsilon", Rule(lambda v: v is None or (is_real(v) and 0 < v <= 1000), "a number in (0, 1000] (or unset)"),
                "Calibrate σ (PRV, before training) so every client's ε at δ is at most this; overrides --sigma. `fedsim budget plan` shows the same calibration.",
                flags=("--target-epsilon",), cli_type=float, show_default=False),
    FieldOption("lr", reals("a number in (0, 10]", lambda v: 0 < v <= 10), "Learning rate of the LoRA factors (AdamW).", cli_type=float),
    FieldOption("lr_decay", reals("a number in (0, 1]", lambda v: 0 < v <= 1),
                "Per-round learning-rate decay: round r trains at lr·decay^(r−1) (every factor and the head).", cli_type=float),
    FieldOption("momentum", reals("a number in [0, 1)", lambda v: 0 <= v < 1), "SGD momentum (--optimizer sgd only; the buffer restarts every phase).", cli_type=float),
    FieldOption("head_lr", reals("a number in (0, 10]", lambda v: 0 < v <= 10), "Learning rate of the classifier head.", cli_type=float),
    FieldOption("b_lr_ratio", reals("a number in (0, 100]", lambda v: 0 < v <= 100), "LA-LoRA: B's learning rate as a multiple of A's.", cli_type=float),
    FieldOption("smoothing", reals("a number in [0, 100] (0 disables)", lambda v: 0 <= v <= 100), "LA-LoRA: Laplacian smoothing strength σ_ls (0 disables).", cli_type=float),
    FieldOption("smoothing_mode", one_of(SMOOTHING_MODES),
                "LA-LoRA: replace (the smoothed noisy gradient replaces the raw one in the optimizer's step) or reference (the published code: a plain SGD step at lr on the smoothed gradient, then the optimizer's step on the raw noisy gradient). Both are post-processing of the DP gradient."),
    FieldOption("lora_rank", integers(1, 1024), "LoRA rank r.", cli_type=int),
    FieldOption("lora_targets", optional(Rule(_is_name_list, "a non-empty list of distinct module-name suffixes, e.g. attn.qkv,attn.proj"), none="None (the model family's default) or "),
                "Comma-separated module-name suffixes that get LoRA (default: attn.qkv,attn.proj for timm; query,key,value,attention.output.dense for text).",
                show_default=False),
    FieldOption("checkpoint", optional(Rule(lambda v: isinstance(v, str) and v.strip() != "", "a path to a local file or directory")),
                "Pretrained weights from this machine, loaded before LoRA: a timm .pth/.safetensors file (e.g. swin_base_patch4_window7_224_22k.pth; a classifier head of another width is re-initialised) or a transformers checkpoint directory for text models.",
                show_default=False),
    FieldOption("partition", one_of(PARTITIONS), "iid or dirichlet."),
    FieldOption("dirichlet_alpha", reals("a number > 0", lambda v: v > 0), "Dirichlet concentration α for non-IID splits (smaller is more skewed).", flags=("--alpha",), cli_type=float),
    FieldOption("seed", Rule(lambda v: is_int(v) and 0 <= v < 2**63, "an integer in [0, 2^63)"),
                "Public seed: data split, partition and initial LoRA factors. DP noise and sampling use the OS CSPRNG.", cli_type=int),
    FieldOption("eval_every", integers(1), "Evaluate the global model every this many rounds (and at the end).", cli_type=int),
    FieldOption("optimizer", one_of(OPTIMIZERS), "adamw or sgd (plain SGD, useful to see clipping at work)."),
    FieldOption("max_length", integers(4, 512), "Text: tokens per example (pad/truncate).", cli_type=int),
    FieldOption("secagg_clip_range", reals("a number in (0, 1e4]", lambda v: 0 < v <= 1e4), "Secure aggregation without client-level DP: each update coordinate is clipped to ±R before fixed-point encoding (with --client-sigma the Skellam code clips the whole update to --client-clip instead).", cli_type=float),
    FieldOption("secagg_threshold", _THRESHOLD,
                "Shamir threshold t: how many holders must help to rebuild a dropped client's mask key or a survivor's self-mask seed. A count (3) or a fraction of each neighbourhood (0.6). Refused: t = 1; t <= c + 1 on the full graph (one update would be released); t <= (s + c)/2 under --secagg-threat-model active; a t that too few survive at the injected dropout rate. Default: an honest majority of each neighbourhood, raised to the smallest safe value.",
                show_default=False),
    FieldOption("secagg_graph", one_of(SECAGG_GRAPHS), "Who masks with whom: full (every pair, Bonawitz et al. 2017: O(n) work per client) or sparse (a random k-regular graph, SecAgg+, Bell et al. 2020: O(log n))."),
    FieldOption("secagg_neighbours", optional(Rule(lambda v: is_int(v) and v >= 2 and v % 2 == 0, "an even integer >= 2"), none="None (chosen for the cohort) or "),
                "SecAgg+ degree k (even) for --secagg-graph sparse. Default: the smallest k that keeps colluders below t - 1 in every neighbourhood and the honest survivors connected after --secagg-max-dropout real dropouts (or the injected rate, if larger), except with probability 2^-40.", cli_type=int, show_default=False),
    FieldOption("secagg_modulus_bits", Rule(lambda v: is_int(v) and v in SECAGG_MODULUS_BITS, f"one of {SECAGG_MODULUS_BITS}"),
                "Ring Z_(2^k) of the masked sums: 32 or 64 (more headroom for large cohorts or clip ranges, twice the traffic).", cli_type=int),
    FieldOption("secagg_collusion", _COLLUSION, "Clients that may collude with the server: a count (2) or a fraction of the cohort (0.2). The full graph needs t >= c + 2."),
    FieldOption("secagg_threat_model", one_of(SECAGG_THREAT_MODELS),
                "semi-honest: the server follows the protocol and may collude with up to --secagg-collusion clients; while real dropouts stay within --secagg-max-dropout it learns only sums of at least 2 honest clients' updates (except with probability 2^-40). It is NOT protected against a server that lies about who dropped or substitutes public keys (clients trust the keys it relays). "
                "active: every client has a long-term Ed25519 identity key; verify keys come from the launcher's rendezvous store, not the server; key adverts and the survivor set are signed (ConsistencyCheck on); t > (n + c)/2 in every neighbourhood (Bonawitz et al. 2017, Sec. 6). Slower; assumes the rendezvous store is not controlled by the server."),
    FieldOption("secagg_max_dropout", reals("a fraction in [0, 0.5]", lambda v: 0 <= v <= 0.5),
                "Declared bound on real (not injected) dropouts per round, a fraction of the cohort, used with the injected rate (the larger wins) to size t and k so that up to that many deaths never release a partial sum. Rounds with more real deaths are outside the guarantee.", cli_type=float),
    FieldOption("secagg_max_abort_probability", reals("a probability in (0, 1)", lambda v: 0 < v < 1),
                "Accepted chance that a round aborts for lack of survivors; small cohorts with dropouts need more than the default 2^-20.", cli_type=float, show_default=False),
    FieldOption("secagg_timeout_s", reals("seconds in [0.1, 86400]", lambda v: 0.1 <= v <= 86_400),
                "Seconds the server waits for a client process's reply to one protocol stage; a process that misses it is dropped for the rest of the run.",
                flags=("--secagg-timeout",), cli_type=float),
    FieldOption("secagg_consistency_check", Rule(lambda v: isinstance(v, bool), "true or false"),
                "Add the ConsistencyCheck stage: clients sign the survivor set (Ed25519) before revealing shares. Under --secagg-threat-model semi-honest (no PKI: the server relays the verify keys) it only checks that the survivors agree on what the server told them; it does not catch a server that lies about who dropped. On, and required, under --secagg-threat-model active, where the keys come from the PKI. Default: on under active, off under semi-honest.",
                flags=("--secagg-consistency-check/--no-secagg-consistency-check",), cli_type=bool, show_default=False),
    FieldOption("dropout_rate", reals("a probability in [0, 1) per stage", lambda v: 0 <= v < 1),
                "Inject dropouts: at each stage in --dropout-stages each client still in the round goes silent with this probability (seeded by --seed). The threshold is sized so that rounds rarely abort at this rate (--secagg-max-abort-probability); privacy is sized for its per-round probability too when that exceeds --secagg-max-dropout.", cli_type=float),
    FieldOption("dropout_stages", _STAGES, "Comma-separated protocol stages where --dropout-rate applies: AdvertiseKeys, ShareKeys, MaskedInputCollection, ConsistencyCheck, Unmasking (default: all).", show_default=False),
    FieldOption("timeout_s", reals("seconds in [10, 86400]", lambda v: 10 <= v <= 86_400),
                "Seconds the server waits for a client process's local training (and ranks wait at start-up) before dropping it or failing.",
                flags=("--timeout",), cli_type=float),
    FieldOption("threads_per_process", integers(1, 256), "torch threads per process.", flags=("--threads",), cli_type=int),
    FieldOption("device", one_of(DEVICES),
                "cpu, cuda or auto; with more client processes than GPUs, rank r uses cuda:(LOCAL_RANK mod device_count); memory is not capped per process (auto: cuda when available)."),
    FieldOption("run_dir", ANY, "Output directory (default runs/<time>-<methods>); must not hold a previous run.", flags=("--run-dir", "-o"), cli_type=Path, show_default=False),
    # Set in a config file only.
    FieldOption("model_kwargs", Rule(lambda v: isinstance(v, Mapping), "a table of extra timm model arguments")),
    FieldOption("lora_alpha", reals("a number > 0", lambda v: v > 0)),
    FieldOption("dropout_schedule", ANY),
)
"""Every :class:`~fedsim.config.RunConfig` field: those with help in ``fedsim run --help`` order, then the config-file-only ones."""
