"""``fedsim run``: its options generated from the options table, and the job starter it shares.

Every :class:`~fedsim.config.RunConfig` field with help in :data:`fedsim.options.FIELD_OPTIONS`
becomes one option of ``fedsim run`` (its names, help, default from ``RunConfig`` and its
allowed values), so a new field needs no edit here. The few options that are not fields
(``--config``, ``--drop``, ``--resume``, ``--dry-run``, ``--verbose``) are declared below. :func:`start_job`
writes the config, launches the world and renders progress, for ``run`` and ``compare``
alike; :func:`dry_run_report` is what ``--dry-run`` prints instead.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from cli.plots import plot_run
from cli.render import ProgressObserver, err, fail, make_progress, summary_table, warn_about_faults
from fedsim.config import RunConfig
from fedsim.errors import RUN_FAILED, FedsimError
from fedsim.events import MethodSummary
from fedsim.options import ANY, FIELD_OPTIONS, FieldOption
from fedsim.rundir import CONFIG_FILE

DEFAULTS = RunConfig()

RUN_HELP = """Run a federated DP-LoRA job (or compare methods) and print accuracy and ε per method.

Without torchrun this spawns a local world: rank 0 = server, one process per client.
Under `torchrun --nproc-per-node=W -m fedsim run ...` each process is one rank.
With no options it runs the bundled default job (LA-LoRA, MiniLM, WordNet glosses).

Examples:

  fedsim run --method la-lora,dp-lora,ffa-lora --rounds 10

  fedsim run --dataset digits --model vit_tiny_patch16_224 --random-init --img-size 32

  torchrun --nproc-per-node=5 -m fedsim run --config job.toml

  fedsim run --secagg-graph sparse --population 1000 --cohort fixed --cohort-size 100 --dry-run

Outputs go to --run-dir; `fedsim budget show RUN_DIR` re-derives every ε from its ledger.
--resume RUN_DIR continues a run that crashed or was interrupted (Ctrl-C, SIGTERM) from its
last completed round, with its own configuration; only --rounds (to extend it) and runtime
settings (--threads-per-process, --timeout-s, --secagg-timeout-s) may change.
--dry-run prints the resolved configuration (with the secure sum's threshold and neighbours
for the planned cohort) as JSON and starts nothing.
"""


def default_text(field_name: str) -> str:
    """A field's default as ``--help`` shows it (lists comma-separated)."""
    value = getattr(DEFAULTS, field_name)
    return ",".join(value) if isinstance(value, tuple) else str(value)


def option_help(option: FieldOption) -> str:
    """The row's help, then "(default: …)" where the row shows it, then its allowed values."""
    text = option.help + (f" (default: {default_text(option.field)})" if option.show_default else "")
    if option.rule is ANY or option.cli_type is bool:
        return text
    return f"{text} Allowed: {escape(option.rule.allowed)}."


def _option(name: str, annotation: Any, *flags: str, help: str) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=typer.Option(None, *flags, help=help)
    )


def run_parameters() -> list[inspect.Parameter]:
    """The signature of ``fedsim run``: ``--config``, one option per table row with help, ``--drop``,
    ``--resume``, ``--dry-run``, ``--verbose``."""
    params = [_option("config_file", Optional[Path], "--config", "-c", help="TOML file whose top-level keys are run options (underscored names); options given here override it.")]
    for option in FIELD_OPTIONS:
        if option.help:
            params.append(_option(option.field, Optional[option.cli_type], *option.flags, help=option_help(option)))
        if option.field == "dropout_stages":
            params.append(_option("drop", Optional[list[str]], "--drop", help="Inject one dropout exactly: ROUND:STAGE:CLIENT[,CLIENT...], e.g. 2:MaskedInputCollection:3. Repeatable; adds to dropout_schedule of --config."))
    params.append(_option(
        "resume", Optional[Path], "--resume",
        help="Continue the run in this directory from its last completed round (its config.json; the ledger goes on in a new segment with a new key). Only --rounds (to extend) and runtime settings may change.",
    ))
    params.append(inspect.Parameter(
        "dry_run", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
        default=typer.Option(
            False, "--dry-run",
            help="Validate and resolve the configuration, print it as one JSON object (with the secure sum's threshold and neighbours for the planned cohort, and with --client-sigma the Skellam code of every phase) and exit; starts no process (with --client-sigma it loads the dataset and builds each model to size the Skellam code).",
        ),
    ))
    params.append(inspect.Parameter(
        "list_presets", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
        default=typer.Option(False, "--list-presets", help="List the presets (name, setup, source, what to provide offline) and exit."),
    ))
    params.append(inspect.Parameter(
        "verbose", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
        default=typer.Option(False, "--verbose", "-v", help="Log protocol details."),
    ))
    return params


def dry_run_report(config: RunConfig) -> dict[str, Any]:
    """What ``fedsim run --dry-run`` prints: the checked config and the secure sum it plans.

    Runs the checks that need no processes (:func:`fedsim.preflight.check_model`,
    :func:`fedsim.preflight.check_secure_aggregation`, and with client-level DP
    :func:`fedsim.preflight.check_client_level_noise`, which loads the dataset and builds
    each model to size the Skellam mechanism; a bad value raises
    :class:`~fedsim.config.ConfigError`), then sizes the secure sum for the planned cohort:
    everyone (``all``), ``cohort_size`` (``fixed``), or the expected size of a Poisson cohort
    (each round is then sized for the cohort it draws). ``target_epsilon`` is not calibrated
    (that needs the shard sizes, so the dataset): the configured ``noise_multiplier`` is shown.
    """
    from fedsim.population import cohort_sampling
    from fedsim.preflight import check_client_level_noise, check_model, check_secure_aggregation
    from fedsim.secure_sum.config import secure_sum_config
    from secagg.params import collusion_count

    check_model(config)
    check_secure_aggregation(config)
    settings = secure_sum_config(config)
    sampling = cohort_sampling(config)
    cohort = sampling.expected_size(config.population_size)
    threshold, neighbours = settings.shape(cohort)
    notes = []
    if config.cohort == "poisson" and config.cohort_rate < 1:
        notes.append(
            f"cohort is Poisson at rate {config.cohort_rate:g}: sizes vary per round; secure_sum is shown for the "
            f"expected size {cohort}, and each round is sized for the cohort it draws"
        )
    if config.target_epsilon is not None:
        notes.append(
            "target_epsilon is set: noise_multiplier is calibrated at run start from the shard sizes "
            "(needs the dataset); the configured value is shown"
        )
    secure_sum = {
        "cohort": cohort,
        "cohort_rule": config.cohort,
        "cohort_size_expected": config.cohort == "poisson" and config.cohort_rate < 1,
        "graph": "full" if neighbours is None else "sparse",
        "threshold": threshold,
        "neighbours": neighbours,
        "threat_model": settings.threat_model,
        "consistency_check": settings.consistency_check or settings.active,
        "max_dropout": settings.max_dropout,
        "dropout_rate": settings.dropout_rate,
        "collusion": collusion_count(cohort, settings.collusion),
        "max_abort_probability": settings.max_abort_probability,
        "modulus_bits": settings.modulus_bits,
    }
    if settings.client_level:
        secure_sum["skellam"] = {
            method: [skellam_summary(p) for p in phases] for method, phases in check_client_level_noise(config).items()
        }
    else:
        secure_sum["frac_bits"] = settings.codec(cohort).frac_bits
    return {"dry_run": True, "config": json.loads(config.to_json()), "secure_sum": secure_sum, "notes": notes}


def skellam_summary(params: Any) -> dict[str, Any]:
    """One phase's Skellam mechanism as ``--dry-run`` shows it (:class:`fedsim.dp.skellam.SkellamParams`)."""
    return {
        "dim": params.dim,
        "padded_dim": params.padded_dim,
        "gamma": params.gamma,
        "l2_sensitivity": params.l2_sensitivity,
        "l1_sensitivity": params.l1_sensitivity,
        "rounding_inflation": params.l2_sensitivity / (params.gamma * params.clip),
        "mu": params.mu,
        "wrap_probability_per_coordinate": params.wrap_probability,
    }


def run_command(
    *, config_file: Optional[Path], drop: Optional[list[str]], resume: Optional[Path], dry_run: bool, list_presets: bool,
    verbose: bool, **fields: Any,
) -> None:
    if list_presets:
        from fedsim.presets import list_presets as presets

        for preset in presets():
            typer.echo(f"{preset.name}: {preset.summary} [{preset.source}]" + "".join(f"\n  provide {x}" for x in preset.provide))
        return
    from fedsim.config import ConfigError, build_config, load_config_file, parse_drops
    from fedsim.transport.world import torchrun_world_size, under_torchrun

    torchrun = under_torchrun()
    rank = int(os.environ["RANK"]) if torchrun else None
    if not dry_run:  # --dry-run imports nothing that runs a rank
        from fedsim.launch import configure_process_logging

        configure_process_logging(logging.DEBUG if verbose else logging.WARNING, rank)
    file_values = load_config_file(config_file) if config_file else {}
    if torchrun:
        world_clients = torchrun_world_size() - 1
        if fields["num_clients"] is not None and fields["num_clients"] != world_clients:
            raise ConfigError("clients", fields["num_clients"], f"WORLD_SIZE - 1 = {world_clients} under torchrun")
        fields["num_clients"] = world_clients
    if drop:
        fields["dropout_schedule"] = parse_drops(drop, file_values.get("dropout_schedule", {}))
    if fields["run_dir"] is not None:
        fields["run_dir"] = str(fields["run_dir"])
    try:
        if resume is not None:
            from fedsim.resume import resumable_config

            config = resumable_config(resume, {**file_values, **{k: v for k, v in fields.items() if v is not None}})
        else:
            config = build_config(file_values, **fields)
        if dry_run:
            if config.run_dir is not None and resume is None:
                check_run_dir(Path(config.run_dir))
            if rank in (None, 0):
                typer.echo(json.dumps(dry_run_report(config)))
            return
        if resume is None:  # a resumed config was checked (and σ calibrated) when the run started
            from fedsim.preflight import preflight

            config = preflight(config)
    except TypeError as exc:  # a value of a type no rule expected
        fail(str(exc))
    if resume is not None and config.target_epsilon is not None:
        err.print(f"resuming: σ = {config.noise_multiplier:.4f} as calibrated when the run started (for ε ≤ {config.target_epsilon:g}); extended rounds spend more")
    elif config.target_epsilon is not None:
        err.print(f"calibrated: σ = {config.noise_multiplier:.4f} gives ε ≤ {config.target_epsilon:g} at δ = {config.delta:g} (PRV upper bound)")
    is_server = rank in (None, 0)
    out = Path(config.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{'+'.join(config.methods)}")
    summaries = start_job(config, out, torchrun=torchrun, is_server=is_server, resume=resume is not None)
    if is_server:
        warn_about_faults(summaries)
        err.print(summary_table(summaries, config.delta))
        err.print(f"curves: {plot_run(out, summaries)}   budget: fedsim budget show {out}")
        for summary in summaries:
            if len(summary.ledger_fingerprints) > 1:
                pins = " ".join(f"--fingerprint {fp}" for fp in summary.ledger_fingerprints)
                err.print(f"{summary.method}: ledger of {len(summary.ledger_fingerprints)} segments; verify: fedsim budget verify {summary.run_dir} {pins}")
        typer.echo(json.dumps({"run_dir": str(out), "results": [s.to_dict() for s in summaries]}))


run_command.__signature__ = inspect.Signature(run_parameters())  # what typer reads
run_command.__doc__ = RUN_HELP


def check_run_dir(out: Path) -> None:
    """Exit 2 unless ``out`` is a new or empty directory."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(f"run_dir={str(out)!r} is invalid: expected a new or empty directory")


def start_job(
    config: RunConfig, out: Path, *, torchrun: bool = False, is_server: bool = True, resume: bool = False
) -> list[MethodSummary]:
    """Write ``config.json`` to a new ``out`` (server only), run the job with progress, return the summaries.

    ``resume``: ``out`` holds the run being continued; its ``config.json`` is replaced
    (atomically) by ``config``, which differs at most in the fields a resume may change.

    A failure of the run exits 1 with its message (:class:`~fedsim.errors.FedsimError`s
    propagate to the CLI's error handler, which shows them the same way).
    """
    from fedsim.launch import launch_local, launch_torchrun

    if is_server and resume:
        from accounting.ledger import write_atomically

        write_atomically(out / CONFIG_FILE, config.to_json().encode())
    elif is_server:
        check_run_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(config.to_json())
    try:
        with make_progress(enabled=is_server) as progress:
            observer = ProgressObserver(progress) if is_server else None
            launch = launch_torchrun if torchrun else launch_local
            return launch(config, out, observer)
    except FedsimError:
        raise
    except (RuntimeError, ValueError) as exc:
        fail(str(exc), code=RUN_FAILED)
