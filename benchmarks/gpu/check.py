"""The device check: fedsim on one CUDA GPU, every figure in one JSON file.

What it runs, each part on its own (a part that fails records its error and the next runs):

1. ``environment``: torch, CUDA, the GPU(s), Python.
2. ``dp_steps``: a ViT-B/16 and a Swin-T at 224 px with LoRA r = 16 on attn.qkv/attn.proj
   (random init, ``pretrained = false``, 100 classes, random images): the DP-SGD step
   (Opacus per-sample gradients, clipping, CSPRNG noise drawn on the CPU and copied, the
   LA-LoRA smoothing; ``benchmarks/bench_dp_step.py``'s steps) vs the plain step, per
   sample, interleaved, medians; the peak GPU memory of each.
3. ``secure_round``: one secure sum in this process (``secagg``'s server and clients driven
   in memory, as ``benchmarks/bench_secagg_scaling.py`` does, with fedsim's fixed-point code)
   of n updates that live on the device: copy to the CPU, encode, the five stages, decode;
   vs the plain float sum on the device; checked against the true sum.
4. ``default_job``: ``fedsim run`` (the bundled default job, shortened to ``--rounds``)
   through the real local launcher, each rank's device read from its log, the GPU memory
   sampled with nvidia-smi while it runs.

The JSON is rewritten after every part, so a run stopped by a time limit keeps what it
measured. On the device machine ``benchmarks/gpu/check.sh`` runs it; here, on a CPU:

    .venv/bin/python benchmarks/gpu/check.py --cpu --quick --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
from importlib import metadata
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _path in (REPO / "benchmarks", REPO):  # fedsim from this checkout; bench_dp_step's steps
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402

logger = logging.getLogger("gpu_check")

MIB = 2**20
FORMAT_VERSION = 1
PARTS = ("dp_steps", "secure_round", "default_job")


@dataclass(frozen=True)
class ModelCase:
    """One model of the DP-step part (a timm name at ``img_size``, LoRA r = ``lora_rank``)."""

    label: str
    timm_name: str
    img_size: int
    batch_size: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    lora_rank: int = 16
    lora_alpha: float = 16.0
    num_classes: int = 100


FULL_MODELS = (
    ModelCase("ViT-B/16", "vit_base_patch16_224", 224, 32),
    ModelCase("Swin-T", "swin_tiny_patch4_window7_224", 224, 32, {"drop_path_rate": 0.0}),
)
QUICK_MODELS = (  # the same code paths at test size (tests/fedsim/models use these shapes)
    ModelCase("ViT (tiny)", "vit_base_patch16_224", 32, 4,
              {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}, lora_rank=4, num_classes=5),
    ModelCase("Swin (tiny)", "swin_tiny_patch4_window7_224", 32, 4,
              {"window_size": 4, "embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2), "drop_path_rate": 0.0},
              lora_rank=4, num_classes=5),
)


@dataclass(frozen=True)
class Plan:
    """What one invocation measures."""

    device: torch.device
    models: tuple[ModelCase, ...]
    steps: int
    warmup: int
    secure_clients: int
    secure_dim: int
    secure_repeats: int
    job_rounds: int
    job_extra: tuple[str, ...]
    job_timeout_s: float
    parts: tuple[str, ...]
    method: str = "la-lora"


def make_plan(args: argparse.Namespace) -> Plan:
    """The full plan on CUDA (about 8 minutes on an H200, most of it the default job), or
    test sizes with ``--quick``; ``--cpu`` runs on the CPU."""
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    parts = tuple(p for p in args.parts.split(",") if p) if args.parts else PARTS
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"--parts={args.parts!r} is invalid: expected a comma-separated subset of {PARTS}")
    if args.quick:
        return Plan(device, QUICK_MODELS, steps=2, warmup=1, secure_clients=3, secure_dim=1000, secure_repeats=1,
                    job_rounds=1, job_extra=("--clients", "2", "--limit", "200", "--local-steps", "1"),
                    job_timeout_s=300.0, parts=parts)
    return Plan(device, FULL_MODELS, steps=args.steps, warmup=2, secure_clients=4, secure_dim=args.secure_dim,
                secure_repeats=3, job_rounds=args.rounds, job_extra=(), job_timeout_s=args.job_timeout, parts=parts)


# ----------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn`` takes, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Run ``fn``; the most GPU memory torch held meanwhile (None on the CPU)."""
    if device.type != "cuda":
        fn()
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / MIB


# --------------------------------------------------------------------------- parts


def environment(device: torch.device) -> dict[str, Any]:
    """The software and the device this check ran on."""
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "device": str(device), "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        total = torch.cuda.get_device_properties(0).total_memory
        info["gpu0_memory_mib"] = round(total / MIB)
    for name in ("opacus", "peft", "timm", "transformers", "randomgen", "cryptography", "numpy"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "missing"
    return info


def dp_step_case(case: ModelCase, device: torch.device, steps: int, warmup: int, method_name: str) -> dict[str, Any]:
    """DP-SGD step vs plain step on ``case``, per sample (medians of ``steps`` interleaved pairs)."""
    from bench_dp_step import dp_step, plain_step, trainable
    from opacus import GradSampleModule

    from fedsim.dp.optimizer import FactorwiseDPOptimizer
    from fedsim.dp.randomness import secret_random
    from fedsim.methods.registry import get_method
    from fedsim.models.build import ModelSpec, build_model

    spec = ModelSpec(
        family="timm", name=case.timm_name, num_classes=case.num_classes, pretrained=False, img_size=case.img_size,
        model_kwargs=case.model_kwargs, lora_rank=case.lora_rank, lora_alpha=case.lora_alpha,
    )
    method = get_method(method_name)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(case.batch_size, 3, case.img_size, case.img_size, generator=generator).to(device)
    labels = torch.randint(0, case.num_classes, (case.batch_size,), generator=generator).to(device)

    plain_model = build_model(spec).to(device).train()
    plain_opt = torch.optim.AdamW(list(trainable(plain_model, method_name)), lr=1e-3)
    dp_base = build_model(spec).to(device).train()
    factor_of = trainable(dp_base, method_name)
    dp_model = GradSampleModule(dp_base, loss_reduction="mean")
    dp_opt = FactorwiseDPOptimizer(
        torch.optim.AdamW(list(factor_of), lr=1e-3), factor_of=factor_of, noise_multiplier=1.0, max_grad_norm=1.0,
        expected_batch_size=case.batch_size, rng=secret_random(), smoothing=1.0 if method.smoothing else 0.0,
    )
    phase = method.phases(1)[0]

    def plain() -> None:
        plain_step(plain_model, plain_opt, (images,), labels)

    def dp(step: int = 0) -> None:
        dp_step(dp_model, dp_opt, (images,), labels, phase.active_at(step))

    plain_peak = peak_mib(lambda: [plain() for _ in range(warmup)], device)
    dp_peak = peak_mib(lambda: [dp(s) for s in range(warmup)], device)
    plain_s, dp_s = [], []
    for step in range(steps):
        plain_s.append(timed(plain, device))
        dp_s.append(timed(lambda: dp(step), device))
    plain_ms = 1e3 * statistics.median(plain_s) / case.batch_size
    dp_ms = 1e3 * statistics.median(dp_s) / case.batch_size
    result = {
        **{k: v for k, v in asdict(case).items() if k != "model_kwargs"},
        "model_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in case.model_kwargs.items()},
        "method": method_name, "steps": steps, "trainable_values": sum(p.numel() for p in factor_of),
        "plain_ms_per_sample": plain_ms, "dp_ms_per_sample": dp_ms, "dp_over_plain": dp_ms / plain_ms,
        "plain_peak_mib": plain_peak, "dp_peak_mib": dp_peak,
    }
    plain_model = dp_model = dp_base = plain_opt = dp_opt = None  # free the device memory before the next model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def secure_round(clients: int, dim: int, device: torch.device, repeats: int) -> dict[str, Any]:
    """One in-process secure sum of ``clients`` updates of ``dim`` values held on ``device``
    (medians of ``repeats``) vs their plain float sum there; the decoded sum is checked."""
    from fedsim.dp.randomness import secret_random
    from fedsim.secure_sum.config import SecureSumConfig
    from fedsim.secure_sum.exchange import sum_code
    from secagg.graph import graph_for
    from secagg.protocol import ClientRound, ServerRound, drive

    config = SecureSumConfig()
    cohort = tuple(range(1, clients + 1))
    generator = torch.Generator().manual_seed(1)
    updates = {c: ((torch.rand(dim, generator=generator) - 0.5) * 0.5).to(device) for c in cohort}
    rounding = secret_random()
    secure_s, encode_s, protocol_s, decode_s, plain_s, errors = [], [], [], [], [], []
    for index in range(repeats):
        session = os.urandom(16)
        start = time.perf_counter()
        host = {c: u.detach().to(device="cpu", dtype=torch.float32) for c, u in updates.items()}
        code = sum_code(config, session=session, exchange=index + 1, dim=dim, cohort_size=clients)
        params = config.protocol_params(session, index + 1, cohort, code.dim or dim)
        graph = graph_for(params)
        rounds = {c: ClientRound(params, c, graph=graph) for c in cohort}
        for c, client in rounds.items():
            client.set_input(code.encode(host[c], rounding))
        encoded = time.perf_counter()
        server = drive(ServerRound(params, graph=graph, keep_transcript=False), rounds)
        if server.aborted:
            raise RuntimeError(f"the secure round aborted: {server.abort_reason}")
        protocol_done = time.perf_counter()
        total = code.decode(server.result, len(server.survivors))
        end = time.perf_counter()
        secure_s.append(end - start)
        encode_s.append(encoded - start)
        protocol_s.append(protocol_done - encoded)
        decode_s.append(end - protocol_done)
        errors.append(float((total - torch.stack(list(host.values())).sum(0)).abs().max()))
        plain_s.append(timed(lambda: torch.stack(list(updates.values())).sum(0).to("cpu"), device))
    ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    return {
        "clients": clients, "dim": dim, "graph": config.graph, "threat_model": config.threat_model,
        "modulus_bits": config.modulus_bits, "updates_on": str(device), "repeats": repeats,
        "secure_ms": ms(secure_s), "encode_ms": ms(encode_s), "protocol_ms": ms(protocol_s), "decode_ms": ms(decode_s),
        "plain_sum_ms": ms(plain_s), "secure_over_plain": statistics.median(secure_s) / statistics.median(plain_s),
        "max_abs_error": max(errors), "error_bound": clients * code_step(config, clients),
    }


def code_step(config, clients: int) -> float:
    """One quantization step of the fixed-point code (each input rounds by less than one)."""
    return 2.0 ** -config.codec(clients).frac_bits


# ------------------------------------------------------------------------ default job

RANK_DEVICE = re.compile(r"rank (\d+)/(\d+) \(local rank (\d+)\) on (\S+)")
"""What :func:`fedsim.transport.world.init_world` logs (INFO) when a rank has joined."""


def rank_devices(log: str) -> dict[int, str]:
    """{rank: device} from the ranks' join lines in a run's log."""
    return {int(m.group(1)): m.group(4) for m in RANK_DEVICE.finditer(log)}


def device_option_available() -> bool:
    """Whether this checkout's ``fedsim run`` has ``--device`` (the RunConfig field)."""
    from fedsim.config import RunConfig

    return "device" in {f.name for f in fields(RunConfig)}


def job_command(python: str, run_dir: Path, rounds: int, device: str | None, extra: Sequence[str] = ()) -> list[str]:
    """``fedsim run`` of the default job, ``rounds`` rounds, logging at debug (each rank's device)."""
    command = [python, "-m", "fedsim", "run", "--rounds", str(rounds), "--run-dir", str(run_dir), "--verbose"]
    if device is not None:
        command += ["--device", device]
    return command + list(extra)


def parse_compute_apps(text: str) -> dict[int, float]:
    """{pid: MiB} from ``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits``."""
    used = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            try:
                used[int(parts[0])] = float(parts[1])
            except ValueError:
                continue
    return used


class GpuMemorySampler:
    """Polls nvidia-smi while a job runs: the most memory each process and the GPU held."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s, self.per_process, self.total_mib = interval_s, {}, 0.0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: str | None = None

    def _query(self, what: str, fmt: str) -> str:
        return subprocess.run(["nvidia-smi", what, fmt], capture_output=True, text=True, timeout=10).stdout

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                apps = parse_compute_apps(self._query("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"))
                for pid, mib in apps.items():
                    self.per_process[pid] = max(mib, self.per_process.get(pid, 0.0))
                gpu = self._query("--query-gpu=memory.used", "--format=csv,noheader,nounits").split()
                if gpu:
                    self.total_mib = max(self.total_mib, float(gpu[0]))
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self.stop_event.wait(self.interval_s)

    def __enter__(self) -> GpuMemorySampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(15)

    def report(self) -> dict[str, Any]:
        return {"gpu_used_peak_mib": self.total_mib, "processes_seen": len(self.per_process),
                "process_peak_mib": sorted(self.per_process.values(), reverse=True), "sampler_error": self.error}


def default_job(plan: Plan, work: Path) -> dict[str, Any]:
    """``fedsim run`` of the default job through the real launcher, on ``plan.device``."""
    device = plan.device.type if device_option_available() else None  # without the field: auto picks CUDA
    command = job_command(sys.executable, work / "run", plan.job_rounds, device, plan.job_extra)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    if plan.device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # auto must not find a GPU either
    log_path = work / "job.log"
    start = time.perf_counter()
    with open(log_path, "w") as log, GpuMemorySampler() as sampler:
        completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=work,
                                   timeout=plan.job_timeout_s)
    wall = time.perf_counter() - start
    log_text = log_path.read_text(errors="replace")
    result: dict[str, Any] = {
        "command": command[1:], "returncode": completed.returncode, "wall_s": wall,
        "rank_devices": rank_devices(log_text), "log_tail": log_text[-2000:] if completed.returncode else "",
    }
    if plan.device.type == "cuda":
        result["gpu_memory"] = sampler.report()
    if completed.returncode == 0:
        final = json.loads(completed.stdout.strip().splitlines()[-1])
        result["results"] = [
            {k: s[k] for k in ("method", "rounds", "initial_accuracy", "accuracy", "loss", "epsilon", "epsilon_method",
                               "seconds")}
            for s in final["results"]
        ]
    return result


# ------------------------------------------------------------------------------- main


class Results:
    """The JSON document, rewritten after every part."""

    def __init__(self, path: Path, plan: Plan) -> None:
        self.path, self.started = path, time.perf_counter()
        self.doc: dict[str, Any] = {"format_version": FORMAT_VERSION, "device": str(plan.device),
                                    "parts": list(plan.parts), "errors": {}}

    def record(self, part: str, fn: Callable[[], Any]) -> None:
        start = time.perf_counter()
        try:
            self.doc[part] = fn()
        except Exception as exc:  # noqa: BLE001 -- one part's failure must not lose the others
            logger.exception("part %s failed", part)
            self.doc["errors"][part] = "".join(traceback.format_exception_only(exc)).strip()
        self.doc.setdefault("part_seconds", {})[part] = time.perf_counter() - start
        self.write()

    def write(self) -> None:
        self.doc["total_seconds"] = time.perf_counter() - self.started
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=str) + "\n")
        tmp.replace(self.path)


def default_out() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "gpu_check.json" if out else Path("gpu_check.json")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="the JSON file (default: $OUT/gpu_check.json, else ./gpu_check.json)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (to test this script without a GPU)")
    parser.add_argument("--quick", action="store_true", help="test sizes: tiny models at 32 px, d = 1000, a 1-round job of 2 clients")
    parser.add_argument("--parts", default="", help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
    parser.add_argument("--steps", type=int, default=8, help="timed DP/plain step pairs per model (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the default job (default 2)")
    parser.add_argument("--secure-dim", type=int, default=1_000_000, help="values per update in the secure round (default 1e6)")
    parser.add_argument("--job-timeout", type=float, default=360.0, help="seconds the default job may take (default 360)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.secure_dim < 1:
        parser.error("--steps, --rounds and --secure-dim must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("error: CUDA is not available to this python (torch %s); use --cpu to test on the CPU" % torch.__version__)
    plan = make_plan(args)
    results = Results(args.out or default_out(), plan)
    results.record("environment", lambda: environment(plan.device))
    if "dp_steps" in plan.parts:
        for case in plan.models:
            logger.info("DP step: %s at %d px, batch %d", case.label, case.img_size, case.batch_size)
            results.record(f"dp_step {case.label}",
                           lambda case=case: dp_step_case(case, plan.device, plan.steps, plan.warmup, plan.method))
    if "secure_round" in plan.parts:
        logger.info("secure round: n = %d, d = %d", plan.secure_clients, plan.secure_dim)
        results.record("secure_round", lambda: secure_round(plan.secure_clients, plan.secure_dim, plan.device,
                                                            plan.secure_repeats))
    if "default_job" in plan.parts:
        logger.info("default job: %d rounds", plan.job_rounds)
        with tempfile.TemporaryDirectory(prefix="fedsim-gpu-check-") as work:
            results.record("default_job", lambda: default_job(plan, Path(work)))
    logger.info("wrote %s (%.0f s; errors: %s)", results.path, results.doc["total_seconds"],
                ", ".join(results.doc["errors"]) or "none")
    return results.doc


if __name__ == "__main__":
    doc = main()
    sys.exit(1 if doc["errors"] else 0)
