"""The ``fedsim`` command line: thin — parse, validate, call the packages, render.

Exit codes: 0 success, 1 the run failed, 2 bad input (a message names the field, the
value and the allowed range).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.budget import budget_app
from cli.compare import compare_command
from cli.plots import plot_run
from fedsim.config import RunConfig
from fedsim.rundir import CONFIG_FILE

DEFAULTS = RunConfig()


def default(field_name: str) -> str:
    """The " (default: …)" suffix of a help text, read from the bundled default job's config."""
    value = getattr(DEFAULTS, field_name)
    if isinstance(value, tuple):
        value = ",".join(value)
    return f" (default: {value})"

app = typer.Typer(
    help=(
        "fedsim: federated LoRA fine-tuning under differential privacy.\n\n"
        "Each client is a torch.distributed process running DP-SGD (Opacus) on its own data; "
        "updates leave a client only under pairwise secure-aggregation masks; a PRV accountant "
        "records every client's privacy budget in a ledger that `fedsim budget` re-checks."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(budget_app, name="budget")
app.command("compare")(compare_command)
console = Console(stderr=True)


class ProgressObserver:
    """Renders one progress bar per method and a line per evaluated round."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def method_started(self, method: str, rounds: int, ledger_fingerprint: str) -> None:
        self.progress.console.print(
            f"{method}: ledger key fingerprint {ledger_fingerprint} "
            f"(pin it: fedsim budget verify RUN_DIR --fingerprint {ledger_fingerprint})"
        )
        self.tasks[method] = self.progress.add_task(f"{method}", total=rounds, status="")

    def round_finished(self, metrics) -> None:
        status = f"ε={metrics.epsilon:.3f}"
        if metrics.accuracy is not None:
            status = f"acc={metrics.accuracy:.3f} loss={metrics.loss:.3f} " + status
        self.progress.update(self.tasks[metrics.method], advance=1, status=status)

    def method_finished(self, summary) -> None:
        self.progress.update(self.tasks[summary.method], status=f"acc={summary.accuracy:.3f} ε={summary.epsilon:.3f} done")


def summary_table(summaries, delta: float) -> Table:
    """The closing table: accuracy, loss, ε (upper, the guarantee) at δ, per method."""
    table = Table(title=f"fedsim: accuracy and privacy (ε upper bound at δ={delta:g})")
    for column in ("method", "rounds", "untrained acc", "final acc", "loss", "ε (upper)", "accountant", "ε RDP", "client-level ε", "time"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for s in summaries:
        table.add_row(
            s.method,
            str(s.rounds),
            f"{s.initial_accuracy:.3f}",
            f"{s.accuracy:.3f}",
            f"{s.loss:.3f}",
            f"{s.epsilon:.3f}",
            s.epsilon_method,
            f"{s.epsilon_rdp:.3f}",
            "–" if s.client_level_epsilon is None else f"{s.client_level_epsilon:.3f}",
            f"{s.seconds:.0f}s",
        )
    return table


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@app.command()
def run(
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file whose top-level keys are run options (underscored names); options given here override it."),
    methods: Optional[str] = typer.Option(None, "--method", "-m", help="Comma-separated methods to compare: la-lora (factors alternate per step + smoothing), dp-lora (A and B together), ffa-lora (A frozen), rolora (factors alternate per round), deer (B then A each round, two secure sums; noise regulator under client-level DP)." + default('methods')),
    dataset: Optional[str] = typer.Option(None, help="wordnet-supersenses (bundled text), digits (scikit-learn), fashion-mnist (Debian package), csv:PATH (text,label) or imagefolder:PATH." + default('dataset')),
    model: Optional[str] = typer.Option(None, help="Text: all-MiniLM-L6-v2 (bundled weights) or a transformers checkpoint/dir. Images: a timm ViT or Swin name." + default('model')),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--random-init", help="Start from pretrained weights (timm needs a model hub)."),
    img_size: Optional[int] = typer.Option(None, help="Image side in pixels for timm models." + default('img_size')),
    limit: Optional[int] = typer.Option(None, help="Use at most this many training examples (stratified)." + default('limit')),
    clients: Optional[int] = typer.Option(None, "--clients", "-n", help="Number of client processes (default 4; under torchrun: WORLD_SIZE - 1)."),
    population: Optional[int] = typer.Option(None, help="Virtual clients, hosted round-robin by the client processes (default: one per process)."),
    cohort: Optional[str] = typer.Option(None, help="Who trains each round: all, poisson (each client w.p. --cohort-rate; client-level DP amplified by q) or fixed (--cohort-size at random; no amplification claimed)." + default("cohort")),
    cohort_rate: Optional[float] = typer.Option(None, help="Poisson cohort rate q." + default("cohort_rate")),
    cohort_size: Optional[int] = typer.Option(None, help="Fixed cohort size m."),
    client_noise_multiplier: Optional[float] = typer.Option(None, "--client-noise-multiplier", "--client-sigma", help="Client-level DP-FedAvg noise z (0 = off): each cohort member clips its update to --client-clip and adds its share of N(0, (z·S)²) before masking." + default("client_noise_multiplier")),
    client_clip: Optional[float] = typer.Option(None, help="Client-level clipping norm S of a whole update." + default("client_clip")),
    rounds: Optional[int] = typer.Option(None, "--rounds", "-r", help="Communication rounds." + default('rounds')),
    local_steps: Optional[int] = typer.Option(None, "--local-steps", "-k", help="DP-SGD steps per client per round (K)." + default('local_steps')),
    batch_size: Optional[int] = typer.Option(None, help="Expected batch size B; Poisson sampling rate q = B / n_i." + default('batch_size')),
    noise_multiplier: Optional[float] = typer.Option(None, "--noise-multiplier", "--sigma", help="Gaussian noise σ, in units of the clipping norm." + default('noise_multiplier')),
    max_grad_norm: Optional[float] = typer.Option(None, "--max-grad-norm", "--clip", help="Per-sample clipping norm C." + default('max_grad_norm')),
    delta: Optional[float] = typer.Option(None, help="δ at which ε is reported." + default('delta')),
    target_epsilon: Optional[float] = typer.Option(None, "--target-epsilon", help="Calibrate σ (PRV, before training) so every client's ε at δ is at most this; overrides --sigma. `fedsim budget plan` shows the same calibration."),
    lr: Optional[float] = typer.Option(None, help="Learning rate of the LoRA factors (AdamW)." + default('lr')),
    head_lr: Optional[float] = typer.Option(None, help="Learning rate of the classifier head." + default('head_lr')),
    b_lr_ratio: Optional[float] = typer.Option(None, help="LA-LoRA: B's learning rate as a multiple of A's." + default('b_lr_ratio')),
    smoothing: Optional[float] = typer.Option(None, help="LA-LoRA: Laplacian smoothing strength σ_ls (0 disables)." + default('smoothing')),
    lora_rank: Optional[int] = typer.Option(None, help="LoRA rank r." + default('lora_rank')),
    partition: Optional[str] = typer.Option(None, help="iid or dirichlet." + default('partition')),
    dirichlet_alpha: Optional[float] = typer.Option(None, "--alpha", help="Dirichlet concentration α for non-IID splits (smaller is more skewed)." + default('dirichlet_alpha')),
    seed: Optional[int] = typer.Option(None, help="Public seed: data split, partition and initial LoRA factors. DP noise and sampling use the OS CSPRNG." + default('seed')),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate the global model every this many rounds (and at the end)." + default('eval_every')),
    optimizer: Optional[str] = typer.Option(None, help="adamw or sgd (plain SGD, useful to see clipping at work)." + default("optimizer")),
    max_length: Optional[int] = typer.Option(None, help="Text: tokens per example (pad/truncate)." + default("max_length")),
    secagg_clip_range: Optional[float] = typer.Option(None, help="Secure aggregation: each update coordinate is clipped to ±R before fixed-point encoding." + default("secagg_clip_range")),
    secagg_threshold: Optional[str] = typer.Option(None, help="Shamir threshold t: how many holders must help to rebuild a dropped client's mask key or a survivor's self-mask seed. A count (3) or a fraction of each neighbourhood (0.6). Above the collusion bound, below the expected survivors. Default: the largest safe honest majority for the dropout rate and collusion bound."),
    secagg_graph: Optional[str] = typer.Option(None, help="Who masks with whom: full (every pair, Bonawitz et al. 2017: O(n) work per client) or sparse (a random k-regular graph, SecAgg+, Bell et al. 2020: O(log n))." + default("secagg_graph")),
    secagg_neighbours: Optional[int] = typer.Option(None, help="SecAgg+ degree k (even) for --secagg-graph sparse. Default: the smallest k that keeps colluders below t and the survivors connected."),
    secagg_modulus_bits: Optional[int] = typer.Option(None, help="Ring Z_(2^k) of the masked sums: 32 or 64 (more headroom for large cohorts or clip ranges, twice the traffic)." + default("secagg_modulus_bits")),
    secagg_collusion: Optional[str] = typer.Option(None, help="Clients that may collude with the server: a count (2) or a fraction of the cohort (0.2). The threshold must exceed it." + default("secagg_collusion")),
    secagg_max_abort_probability: Optional[float] = typer.Option(None, help="Accepted chance that a round aborts for lack of survivors; small cohorts with dropouts need more than the default 2^-20."),
    secagg_timeout: Optional[float] = typer.Option(None, help="Seconds the server waits for a client process's reply to one protocol stage; a process that misses it is dropped for the rest of the run." + default("secagg_timeout_s")),
    secagg_consistency_check: Optional[bool] = typer.Option(None, "--secagg-consistency-check/--no-secagg-consistency-check", help="Add the ConsistencyCheck stage: clients sign the survivor set (Ed25519) so a server that lies about who dropped is caught."),
    dropout_rate: Optional[float] = typer.Option(None, help="Inject dropouts: at each stage in --dropout-stages each client still in the round goes silent with this probability (seeded by --seed). The protocol's threshold is chosen to tolerate it." + default("dropout_rate")),
    dropout_stages: Optional[str] = typer.Option(None, help="Comma-separated protocol stages where --dropout-rate applies: AdvertiseKeys, ShareKeys, MaskedInputCollection, ConsistencyCheck, Unmasking (default: all)."),
    drop: Optional[list[str]] = typer.Option(None, "--drop", help="Inject one dropout exactly: ROUND:STAGE:CLIENT[,CLIENT...], e.g. 2:MaskedInputCollection:3. Repeatable; adds to dropout_schedule of --config."),
    timeout: Optional[float] = typer.Option(None, help="Seconds the server waits for a client process's local training (and ranks wait at start-up) before dropping it or failing." + default("timeout_s")),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads per process." + default('threads_per_process')),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", "-o", help="Output directory (default runs/<time>-<methods>); must not hold a previous run."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log protocol details."),
) -> None:
    """Run a federated DP-LoRA job (or compare methods) and print accuracy and ε per method.

    Without torchrun this spawns a local world: rank 0 = server, one process per client.
    Under `torchrun --nproc-per-node=W -m fedsim run ...` each process is one rank.
    With no options it runs the bundled default job (LA-LoRA, MiniLM, WordNet glosses).

    Examples:

      fedsim run --method la-lora,dp-lora,ffa-lora --rounds 10

      fedsim run --dataset digits --model vit_tiny_patch16_224 --random-init --img-size 32

      torchrun --nproc-per-node=5 -m fedsim run --config job.toml

    Outputs go to --run-dir; `fedsim budget show RUN_DIR` re-derives every ε from its ledger.
    """
    from fedsim.config import ConfigError, build_config, load_config_file, parse_count_or_fraction, parse_drops
    from fedsim.launch import LaunchError, configure_process_logging, launch_local, launch_torchrun
    from fedsim.preflight import preflight
    from fedsim.transport.world import torchrun_world_size, under_torchrun

    torchrun = under_torchrun()
    configure_process_logging(logging.DEBUG if verbose else logging.WARNING, int(os.environ["RANK"]) if torchrun else None)
    try:
        file_values = load_config_file(config_file) if config_file else {}
        if torchrun:
            world_clients = torchrun_world_size() - 1
            if clients is not None and clients != world_clients:
                raise ConfigError("clients", clients, f"WORLD_SIZE - 1 = {world_clients} under torchrun")
            clients = world_clients
        schedule = parse_drops(drop, file_values.get("dropout_schedule", {})) if drop else None
        config = build_config(
            file_values,
            methods=methods, dataset=dataset, model=model, pretrained=pretrained, img_size=img_size,
            limit=limit, num_clients=clients, population=population, cohort=cohort, cohort_rate=cohort_rate,
            cohort_size=cohort_size, client_noise_multiplier=client_noise_multiplier, client_clip=client_clip, rounds=rounds, local_steps=local_steps, batch_size=batch_size,
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, delta=delta, target_epsilon=target_epsilon, lr=lr,
            head_lr=head_lr, b_lr_ratio=b_lr_ratio, smoothing=smoothing, lora_rank=lora_rank,
            partition=partition, dirichlet_alpha=dirichlet_alpha, seed=seed, eval_every=eval_every,
            optimizer=optimizer, max_length=max_length, secagg_clip_range=secagg_clip_range, timeout_s=timeout,
            secagg_threshold=parse_count_or_fraction("secagg_threshold", secagg_threshold),
            secagg_graph=secagg_graph, secagg_neighbours=secagg_neighbours, secagg_modulus_bits=secagg_modulus_bits,
            secagg_collusion=parse_count_or_fraction("secagg_collusion", secagg_collusion),
            secagg_max_abort_probability=secagg_max_abort_probability, secagg_timeout_s=secagg_timeout,
            secagg_consistency_check=secagg_consistency_check, dropout_rate=dropout_rate,
            dropout_stages=dropout_stages, dropout_schedule=schedule,
            threads_per_process=threads, run_dir=str(run_dir) if run_dir else None,
        )
        config = preflight(config)
    except (ConfigError, TypeError) as exc:
        fail(str(exc))
    if config.target_epsilon is not None:
        console.print(f"calibrated: σ = {config.noise_multiplier:.4f} gives ε ≤ {config.target_epsilon:g} at δ = {config.delta:g} (PRV upper bound)")
    is_server = not torchrun or int(os.environ["RANK"]) == 0
    out = Path(config.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{'+'.join(config.methods)}")
    if is_server:
        if out.exists() and any(out.iterdir()):
            fail(f"run_dir={str(out)!r} is invalid: expected a new or empty directory")
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(config.to_json())
    try:
        with make_progress(enabled=is_server) as progress:
            observer = ProgressObserver(progress) if is_server else None
            launch = launch_torchrun if torchrun else launch_local
            summaries = launch(config, out, observer)
    except (LaunchError, RuntimeError, ValueError) as exc:
        fail(str(exc), code=1)
    if is_server:
        warn_about_faults(summaries)
        console.print(summary_table(summaries, config.delta))
        console.print(f"curves: {plot_run(out, summaries)}   budget: fedsim budget show {out}")
        typer.echo(json.dumps({"run_dir": str(out), "results": [s.to_dict() for s in summaries]}))


def warn_about_faults(summaries) -> None:
    """Name the client processes dropped during the run and count aborted rounds."""
    dropped = summaries[-1].dropped_processes if summaries else {}
    for rank, reason in sorted(dropped.items()):
        console.print(f"[bold yellow]warning:[/] client process rank {rank} was dropped: {escape(reason)}")
    for s in summaries:
        if s.aborted_rounds:
            console.print(
                f"[bold yellow]warning:[/] {s.method}: {s.aborted_rounds} of {s.rounds} rounds aborted "
                f"(global model unchanged; see aborted/abort_reason in {escape(s.run_dir)}/metrics.jsonl)"
            )


def make_progress(enabled: bool) -> Progress:
    """A rich progress display on stderr (disabled on non-server ranks)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rounds"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=not enabled,
    )


def main() -> None:
    """Console-script entry point."""
    app()
