"""Resuming a run: what a resumed run may change, where each method stands, and interruptions.

``fedsim run --resume RUN_DIR`` continues every method of the run in ``RUN_DIR`` from its
last completed round (docs/architecture.md, "Persisted formats"):

* **The commit point of a round is its ``state.json``** (:class:`MethodState`), written
  atomically last, after the round's ledger records (fsynced), its ``metrics.jsonl`` row,
  the adapter and the global state of every trainable parameter
  (``global_state.r<round>.safetensors``, named by round, so the file ``state.json`` names
  is never the one being written). A crash anywhere before it leaves the previous round
  committed; a ``metrics.jsonl`` row past the committed round is dropped on resume, ledger
  records are never dropped: privacy a crashed round spent stays spent (the resumed run
  redoes that round, and both releases are accounted).
* **The config is the run's own** (``config.json``): a resumed run may extend ``rounds``
  and change the runtime settings of :data:`RUNTIME_FIELDS`; any other change is a
  :class:`~fedsim.config.ConfigError` naming the field (:func:`resumed_config`). σ is
  not recalibrated: extending a run calibrated for ``target_epsilon`` spends more than it.
* **The accountant is replayed from the ledger**, which continues in a new segment signed
  by a fresh key (:meth:`accounting.Ledger.resume`).
* **Interruptions** (SIGINT, SIGTERM at the launcher): :class:`InterruptSignals` turns the
  signal into a ``KeyboardInterrupt`` (:func:`interruption`: a BaseException, so no
  ``except Exception`` of the protocol code mistakes it for a failed round), except while
  the server records a round (:func:`critical_section`), where it waits for the round to
  be committed. The round in flight is abandoned: the ledger gets the records of the
  clients that reported in it, nothing else of it is written, and ``state.json`` says
  ``interrupted``; the launcher then raises :class:`RunInterrupted` (exit 128 + signal).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from accounting.ledger import write_atomically
from fedsim.config import FIELD_NAMES, ConfigError, RunConfig, build_config, config_from_json
from fedsim.errors import FedsimError
from fedsim.events import MethodSummary
from fedsim.rundir import (
    ADAPTER_DIR,
    CONFIG_FILE,
    FORMAT_VERSION_FIELD,
    LEDGER_FILE,
    METRICS_FILE,
    STATE_FILE,
    STATE_FORMAT_VERSION,
    SUMMARY_FILE,
    global_state_file,
    method_run_dir,
    readable_format,
)

__all__ = [
    "COMPLETE",
    "INTERRUPTED",
    "RUNNING",
    "RUNTIME_FIELDS",
    "InterruptSignals",
    "MethodState",
    "RunInterrupted",
    "critical_section",
    "interruption",
    "load_global_state",
    "mark_interrupted",
    "prepare_method_dir",
    "read_state",
    "read_summary",
    "resumable_config",
    "resumed_config",
    "save_global_state",
    "signal_name",
    "write_state",
]

logger = logging.getLogger(__name__)

RUNNING, INTERRUPTED, COMPLETE = "running", "interrupted", "complete"
"""``state.json`` status: rounds are going on (or the run was killed), a signal stopped it, every round is done."""

RUNTIME_FIELDS = frozenset({"threads_per_process", "timeout_s", "secagg_timeout_s"})
"""Fields a resumed run may change besides ``rounds``: they change how fast, never what is computed."""


# ------------------------------------------------------------------------------- config


def resumed_config(saved: RunConfig, given: Mapping[str, Any]) -> RunConfig:
    """The run's config with the changes a resume allows: ``rounds`` (only up) and :data:`RUNTIME_FIELDS`.

    ``given`` holds what the user gave (command-line options and ``--config`` values, by
    field name); a value equal to the run's own is not a change. Raises
    :class:`~fedsim.config.ConfigError` naming the first field that would change anything else.
    """
    changes: dict[str, Any] = {}
    for key, value in given.items():
        name = key.replace("-", "_")
        if name not in FIELD_NAMES:
            raise ConfigError(key, value, f"a known field: {', '.join(sorted(FIELD_NAMES))}")
        parsed = getattr(build_config(_as_values(saved), **{name: value}), name)
        before = getattr(saved, name)
        if parsed == before:
            continue
        if name == "rounds":
            if parsed < saved.rounds:
                raise ConfigError("rounds", value, f"an integer >= {saved.rounds}, the run's rounds (--resume may only extend a run)")
        elif name not in RUNTIME_FIELDS:
            allowed = ", ".join(["rounds (to extend)", *sorted(RUNTIME_FIELDS)])
            raise ConfigError(name, value, f"{before!r} as the run was started: a resumed run may change only {allowed}; start a new run for another setting")
        changes[name] = parsed
    return dataclasses.replace(saved, **changes) if changes else saved


def _as_values(config: RunConfig) -> dict[str, Any]:
    """``config`` as the field values :func:`~fedsim.config.build_config` takes."""
    values = json.loads(config.to_json())
    values.pop(FORMAT_VERSION_FIELD, None)
    return values


def resumable_config(run_dir: Path, given: Mapping[str, Any]) -> RunConfig:
    """The config to continue ``run_dir`` with (:func:`resumed_config` of its ``config.json``).

    Raises :class:`~fedsim.config.ConfigError` (field ``resume``) when ``run_dir`` holds no
    run, or when every method already ran all its rounds and ``rounds`` is not extended.
    """
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError("resume", str(run_dir), f"a run directory written by `fedsim run` (it has no {CONFIG_FILE})")
    saved = config_from_json(config_path.read_text())
    if "run_dir" in given and given["run_dir"] is not None and Path(given["run_dir"]) != run_dir:
        raise ConfigError("run_dir", given["run_dir"], f"{str(run_dir)!r} (the directory being resumed) or unset")
    config = resumed_config(saved, {k: v for k, v in given.items() if k != "run_dir"})
    config = dataclasses.replace(config, run_dir=str(run_dir))
    states = [read_state(method_run_dir(run_dir, config.methods, m)) for m in config.methods]
    if all(s is not None and s.status == COMPLETE and s.round >= config.rounds for s in states):
        raise ConfigError(
            "resume", str(run_dir), f"a run with rounds left: every method completed its {config.rounds} rounds "
            f"(give --rounds N > {config.rounds} to extend it)",
        )
    return config


# --------------------------------------------------------------------------- method state


@dataclass(frozen=True)
class MethodState:
    """``state.json`` of one method: its last committed round and what continues it.

    ``global_state``: the file (beside it) holding every trainable parameter's global value
    after ``round`` (None before the first round); ``initial_accuracy``: the evaluation
    before training (a resumed run does not redo it); ``aborted_rounds``: so far;
    ``ledger_fingerprints``: the key of every ledger segment so far, in order.
    """

    method: str
    round: int
    status: str
    global_state: Optional[str]
    initial_accuracy: float
    aborted_rounds: int = 0
    ledger_fingerprints: tuple[str, ...] = ()
    interrupted_by: Optional[str] = None
    format_version: int = STATE_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ledger_fingerprints"] = list(self.ledger_fingerprints)
        return data


def write_state(out: Path, state: MethodState) -> None:
    """Replace ``out/state.json`` atomically (the round's commit point)."""
    write_atomically(out / STATE_FILE, (json.dumps(state.to_dict(), indent=2, sort_keys=True) + "\n").encode())


def read_state(out: Path) -> Optional[MethodState]:
    """``out/state.json``, or None if the method never committed anything; ConfigError if unreadable."""
    path = out / STATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not readable_format(data, STATE_FORMAT_VERSION):
            raise ValueError(f"{FORMAT_VERSION_FIELD}={data.get(FORMAT_VERSION_FIELD)!r}, this fedsim reads {STATE_FORMAT_VERSION}")
        data["ledger_fingerprints"] = tuple(data.get("ledger_fingerprints", ()))
        state = MethodState(**data)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError("resume", str(path), f"a readable {STATE_FILE} ({exc})") from None
    if state.status not in (RUNNING, INTERRUPTED, COMPLETE):
        raise ConfigError("resume", str(path), f"a {STATE_FILE} whose status is {RUNNING}, {INTERRUPTED} or {COMPLETE}, got {state.status!r}")
    return state


def mark_interrupted(out: Path, method: str, signal_name: str) -> None:
    """Say in ``out/state.json`` that ``signal_name`` stopped the method (its last committed round stays)."""
    state = read_state(out) or MethodState(method, 0, RUNNING, None, float("nan"))
    write_state(out, dataclasses.replace(state, status=INTERRUPTED, interrupted_by=signal_name))


def save_global_state(out: Path, round_idx: int, params: Mapping[str, torch.nn.Parameter]) -> str:
    """Write every trainable parameter's global value after ``round_idx`` (safetensors, atomically); its file name."""
    from safetensors.torch import save

    name = global_state_file(round_idx)
    tensors = {key: p.detach().to("cpu", copy=True).contiguous() for key, p in sorted(params.items())}
    write_atomically(out / name, save(tensors, metadata={"round": str(round_idx), FORMAT_VERSION_FIELD: str(STATE_FORMAT_VERSION)}))
    return name


def load_global_state(out: Path, state: MethodState, params: Mapping[str, torch.nn.Parameter]) -> None:
    """Set ``params`` to the global state ``state`` names; ConfigError naming a missing, extra or reshaped parameter."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = out / str(state.global_state)
    try:
        tensors = load(path.read_bytes())
    except (OSError, SafetensorError) as exc:
        raise ConfigError("resume", str(path), f"the global state of round {state.round} ({exc})") from None
    missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or extra:
        raise ConfigError("resume", str(path), f"the parameters of this model (missing {missing[:3]}, unknown {extra[:3]})")
    with torch.no_grad():
        for key, param in params.items():
            if tensors[key].shape != param.shape:
                raise ConfigError("resume", str(path), f"parameter {key} of shape {tuple(param.shape)}, got {tuple(tensors[key].shape)}")
            param.copy_(tensors[key].to(param.device, param.dtype))


def prepare_method_dir(out: Path, committed: int) -> None:
    """Make a method's folder what it was when round ``committed`` was committed.

    Drops ``metrics.jsonl`` rows past ``committed`` (and a torn last line), puts back an
    adapter a crash left mid-swap, and removes global-state files no ``state.json`` names.
    The ledger is never touched here: it continues in a new segment.
    """
    metrics = out / METRICS_FILE
    if metrics.is_file():
        kept = []
        for line in metrics.read_text().splitlines(keepends=True):
            try:
                row = json.loads(line)
            except ValueError:
                continue  # torn by the crash
            if line.endswith("\n") and isinstance(row, dict) and isinstance(row.get("round"), int) and row["round"] <= committed:
                kept.append(line)
        write_atomically(metrics, "".join(kept).encode())
    adapter, previous = out / ADAPTER_DIR, out / (ADAPTER_DIR + ".old")
    if not adapter.exists() and previous.is_dir():
        previous.rename(adapter)
    state = read_state(out)
    for stale in out.glob("global_state.r*.safetensors"):
        if state is None or stale.name != state.global_state:
            stale.unlink()


def ledger_to_continue(out: Path) -> Optional[Path]:
    """The method's ledger when it holds lines (continue it in a new segment), else None (start one)."""
    path = out / LEDGER_FILE
    return path if path.is_file() and path.stat().st_size > 0 else None


# --------------------------------------------------------------------------- interruptions


class RunInterrupted(FedsimError, RuntimeError):
    """SIGINT or SIGTERM stopped the run; exit code 128 + the signal number (130, 143), as shells report it."""

    def __init__(self, signal_name: str, signal_number: int, message: str = "") -> None:
        self.signal_name = signal_name
        self.exit_code = 128 + signal_number
        super().__init__(f"interrupted by {signal_name}{message}")

    @classmethod
    def of(cls, interrupt: KeyboardInterrupt, message: str = "") -> "RunInterrupted":
        """The run-level error of an :func:`interruption` (a plain Ctrl-C counts as SIGINT)."""
        return cls(signal_name(interrupt), getattr(interrupt, "signal_number", int(signal.SIGINT)), message)


def interruption(signum: int) -> KeyboardInterrupt:
    """What the handler raises: a KeyboardInterrupt naming the signal; the server's loop
    sets ``abandoned`` on it (the ledger records of the round in flight) before it goes on."""
    interrupt = KeyboardInterrupt(signal.Signals(signum).name)
    interrupt.signal_number = signum
    interrupt.abandoned = ()
    return interrupt


def signal_name(interrupt: KeyboardInterrupt) -> str:
    """The signal an interrupt came from (SIGINT for Python's own Ctrl-C)."""
    return signal.Signals(getattr(interrupt, "signal_number", int(signal.SIGINT))).name


class InterruptSignals:
    """SIGINT/SIGTERM handler of the server process: raise an :func:`interruption`, or defer it.

    Inside :meth:`deferred` (:func:`critical_section`) a signal is remembered and raised
    when the section ends, so nothing is half-written. Install it with :meth:`installed`
    (main thread only); the previous handlers come back afterwards.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.depth = 0
        self.pending: Optional[KeyboardInterrupt] = None

    def __call__(self, signum: int, frame: Any) -> None:
        interrupt = interruption(signum)
        if self.depth:
            self.pending = self.pending or interrupt
            logger.warning("%s received: the run stops once this round is recorded", signal_name(interrupt))
            return
        raise interrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.depth == 0 and self.pending is not None:
            pending, self.pending = self.pending, None
            raise pending

    @contextlib.contextmanager
    def installed(self) -> Iterator["InterruptSignals"]:
        previous = {sig: signal.signal(sig, self) for sig in self.SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def critical_section() -> contextlib.AbstractContextManager:
    """Defer SIGINT/SIGTERM until the block ends, where :class:`InterruptSignals` is installed.

    The process's signal table says whether it is (no state of this module's own): a run
    without the launcher's handler (a test calling the loop) gets a no-op.
    """
    handler = signal.getsignal(signal.SIGINT)
    return handler.deferred() if isinstance(handler, InterruptSignals) else contextlib.nullcontext()


def read_summary(out: Path) -> MethodSummary:
    """The ``summary.json`` of a method that completed its rounds (a resume does not rerun it)."""

    try:
        data = json.loads((out / SUMMARY_FILE).read_text())
        data["ledger_fingerprints"] = tuple(data.get("ledger_fingerprints", ()))
        data["dropped_processes"] = {int(k): v for k, v in data.get("dropped_processes", {}).items()}
        return MethodSummary(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError("resume", str(out / SUMMARY_FILE), f"the summary of a completed method ({exc})") from None
