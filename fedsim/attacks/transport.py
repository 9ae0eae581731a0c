"""``oversize-message``: a client process against the relay.

With gloo as the transport, a peer that sent more bytes than the posted receive killed
the receiving process (``gloo::EnforceNotMet``, SIGABRT): one modified client could take
the server, and the run's summary, down (issue 10, item 4). The relay
(:mod:`fedsim.transport.relay`) now reads a frame's fixed header first and checks the
announced length against its limit for that (kind, stage) before it allocates or reads
the body; a peer over the limit is dropped and named.

The scenario runs one secure sum the way a run does: rank 0 runs
:func:`fedsim.secure_sum.exchange.server_secure_sum` over a
:class:`~fedsim.transport.relay.ServerRelay` (its body caps set by
:func:`~fedsim.secure_sum.config.reply_limit` and ``stage_limits``, as the server loop
sets them), honest ranks
run :func:`~fedsim.secure_sum.exchange.client_secure_sum` over a
:class:`~fedsim.transport.relay.ClientRelay`, each hosting two virtual clients, and an
attacker rank (one virtual client) answers the first STAGE frame with crafted bytes:

- ``announced``: a REPLY header announcing a 2^40-byte body, then 64 KiB of garbage;
- ``sent``: a well-formed REPLY frame whose body really is 8 MiB, far above the limit.

Under ``active`` every rank publishes its clients' identity keys in the rendezvous store
and the server and honest clients read the PKI from there (:mod:`fedsim.secure_sum.identity`).

In memory (the default) the ranks are threads of this process talking over real local
TCP sockets through a real TCPStore, and both attackers join one round; with
``--processes`` they are real torch.distributed processes (``init_world``: gloo
rendezvous, the store), one attacker sending the 8 MiB frame. HOLDS when the server
finishes the round with the honest clients' sum, every attacker is dropped and named with
a reason about the size, and the server (thread or process) is still there to say so.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import struct
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from fedsim.attacks.registry import BROKEN, HOLDS, AttackResult
from fedsim.attacks.rounds import honest_threshold, secure_sum_config, short
from secagg.threat_models import ACTIVE

__all__ = ["oversize_message"]

logger = logging.getLogger(__name__)

DIM = 64
SESSION = bytes.fromhex("a77ac4ed0123456789abcdef01234567")
ROUND = 1
ANNOUNCED_BYTES = 1 << 40
"""Body length the ``announced`` attacker's header claims."""
SENT_BYTES = 8 << 20
"""Body the ``sent`` attacker really sends (8 MiB)."""
TIMEOUT_S = 20.0
"""Stage deadline, connection and PKI waits of the scenario's world."""
_FRAME_HEADER = struct.Struct(">4sBBBBQQ")  # fedsim.transport.framing's 24-byte header


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _update(cid: int) -> torch.Tensor:
    """The known update of honest client ``cid`` (test data, not secret)."""
    generator = torch.Generator().manual_seed(1000 + cid)
    return torch.randn(DIM, generator=generator) * 0.5


def _layout(honest: int, attackers: Sequence[str]) -> tuple[dict[int, tuple[int, ...]], dict[int, str]]:
    """Hosted clients per client rank (two per honest rank, one per attacker) and the attackers' variants."""
    hosts = {rank: (2 * rank - 1, 2 * rank) for rank in range(1, honest + 1)}
    roles = {}
    for i, variant in enumerate(attackers):
        rank = honest + 1 + i
        hosts[rank] = (2 * honest + 1 + i,)
        roles[rank] = variant
    return hosts, roles


def _config(threat_model: str, cohort_size: int):
    return secure_sum_config(
        threat_model, clip_range=2.0, threshold=honest_threshold(cohort_size, threat_model), timeout_s=TIMEOUT_S
    )


# --- the roles (one per rank; threads in memory, processes with --processes) ---------------------


def _serve(store, hosts: Mapping[int, tuple[int, ...]], threat_model: str) -> dict:
    """Rank 0: one secure sum over the relay; what happened, as JSON-ready fields."""
    from fedsim.secure_sum import config as sizing
    from fedsim.secure_sum.exchange import server_secure_sum
    from fedsim.transport.relay import ServerRelay

    cohort = tuple(sorted(c for ids in hosts.values() for c in ids))
    config = _config(threat_model, len(cohort))
    hosted = max(len(ids) for ids in hosts.values())
    relay = ServerRelay(store, list(hosts), max_body_bytes=sizing.reply_limit(DIM, len(cohort), hosted), connect_timeout_s=TIMEOUT_S)
    relay.set_stage_limits(sizing.stage_limits(DIM, cohort=len(cohort), hosted=hosted))  # as the server loop sets them
    verify_keys = None
    if threat_model == ACTIVE:
        from fedsim.secure_sum.identity import read_verify_keys

        verify_keys = read_verify_keys(store, cohort, TIMEOUT_S)
    result = server_secure_sum(
        relay, dict(hosts), session=SESSION, round_idx=ROUND, cohort=cohort, dim=DIM, config=config,
        verify_keys=verify_keys,
    )
    from fedsim.transport.vocabulary import Kind
    from secagg.stages import ADVERTISE_KEYS

    report = {
        "aborted": result.outcome.aborted,
        "abort_reason": result.outcome.abort_reason,
        "survivors": list(result.outcome.survivors),
        "total": None if result.total is None else [float(v) for v in result.total],
        "dropped": {str(rank): reason for rank, reason in relay.dropped.items()},
        "limit": relay.body_limit(Kind.REPLY, ADVERTISE_KEYS),
        "clip": config.clip_range,
        "scale": config.codec(len(cohort)).scale,
    }
    relay.close("attack over", timeout_s=5.0)
    return report


def _pki(store, hosted: tuple[int, ...], cohort: tuple[int, ...], threat_model: str):
    if threat_model != ACTIVE:
        return None
    from fedsim.secure_sum.identity import client_pki

    return client_pki(store, hosted, cohort, TIMEOUT_S)


def _participate(store, rank: int, hosts: Mapping[int, tuple[int, ...]], threat_model: str) -> None:
    """An honest client process: one secure sum, then wait for the end of the run."""
    from fedsim.dp.randomness import secret_random
    from fedsim.secure_sum.exchange import client_secure_sum
    from fedsim.transport.relay import ClientRelay, Evicted, RelayError
    from fedsim.transport.vocabulary import Kind

    cohort = tuple(sorted(c for ids in hosts.values() for c in ids))
    pki = _pki(store, hosts[rank], cohort, threat_model)
    relay = ClientRelay(store, 0, timeout_s=3 * TIMEOUT_S, rank=rank, connect_timeout_s=TIMEOUT_S)
    client_secure_sum(
        relay, hosts[rank], lambda ids: {cid: _update(cid) for cid in ids}, session=SESSION, round_idx=ROUND, dim=DIM,
        config=_config(threat_model, len(cohort)), rounding=secret_random(),
        identities=pki.identities if pki else None, verify_keys=pki.verify_keys if pki else None,
    )
    try:
        relay.receive(Kind.FINISH)
    except (Evicted, RelayError):
        pass
    relay.close()


def _crafted(variant: str, stage_frame, client: int) -> bytes:
    """The attacker's bytes in answer to ``stage_frame``."""
    from fedsim.transport.framing import MAGIC, VERSION, Frame, encode_frame
    from fedsim.transport.vocabulary import FRAME_STAGES, Kind

    if variant == "announced":
        header = _FRAME_HEADER.pack(
            MAGIC, VERSION, int(Kind.REPLY), FRAME_STAGES.index(stage_frame.stage), 0, stage_frame.round, ANNOUNCED_BYTES
        )
        return header + os.urandom(64 * 1024)
    frame = Frame(Kind.REPLY, stage_frame.round, stage_frame.stage, {client: bytes(SENT_BYTES)})
    return encode_frame(frame).numpy().tobytes()


def _attack(store, rank: int, hosts: Mapping[int, tuple[int, ...]], variant: str, threat_model: str) -> str:
    """A modified client process: joins, then answers the first stage with ``variant``'s bytes."""
    from fedsim.transport.relay import ClientRelay, Evicted, RelayError
    from fedsim.transport.vocabulary import Kind

    cohort = tuple(sorted(c for ids in hosts.values() for c in ids))
    _pki(store, hosts[rank], cohort, threat_model)
    relay = ClientRelay(store, 0, timeout_s=3 * TIMEOUT_S, rank=rank, connect_timeout_s=TIMEOUT_S)
    relay.receive(Kind.START)
    stage_frame = relay.receive(Kind.STAGE)
    relay.link.send_raw(_crafted(variant, stage_frame, hosts[rank][0]))
    try:
        relay.receive(Kind.FINISH)
        told = "not evicted"
    except Evicted as exc:
        told = str(exc)
    except RelayError as exc:
        told = f"link ended: {exc}"
    relay.link.kill("attack over")
    return told


# --- judging ------------------------------------------------------------------------------------


def _judge(threat_model: str, report: dict | None, hosts: Mapping[int, tuple[int, ...]], roles: Mapping[int, str], where: str, server_failure: str | None) -> AttackResult:
    if report is None:
        return AttackResult(
            "oversize-message", threat_model, BROKEN, f"the server {where} did not finish: {short(server_failure, 90)}",
            "a client's oversize frame took the server down (or hung it): nothing was recorded",
        )
    honest = sorted(c for rank, ids in hosts.items() if rank not in roles for c in ids)
    named = {int(rank): reason for rank, reason in report["dropped"].items()}
    size_words = ("limit", "large", "length", "bytes")
    unnamed = [rank for rank in roles if rank not in named or not any(w in named[rank] for w in size_words)]
    innocent = [rank for rank in named if rank not in roles]
    expected = sum(_update(c).clamp(-report["clip"], report["clip"]) for c in honest)
    exact = False
    if report["total"] is not None:
        total = torch.tensor(report["total"])
        exact = bool(torch.allclose(total, expected, atol=len(honest) * 2.0 / report["scale"] + 1e-6))
    completed = not report["aborted"] and report["survivors"] == honest and exact
    verdict = HOLDS if completed and not unnamed and not innocent else BROKEN
    attackers = ", ".join(f"rank {rank} ({roles[rank]})" for rank in sorted(roles))
    if verdict == HOLDS:
        figure = f"round completed with the {len(honest)} honest clients' sum; dropped and named: {attackers}"
    elif report["aborted"]:
        figure = f"round aborted: {short(report['abort_reason'], 90)}"
    elif unnamed:
        figure = f"attacker rank {unnamed[0]} not dropped for its size" + (f": {short(named.get(unnamed[0]), 70)}" if unnamed[0] in named else "")
    elif innocent:
        figure = f"honest rank {innocent[0]} dropped: {short(named[innocent[0]], 80)}"
    else:
        figure = f"survivors {report['survivors']}, sum {'exact' if exact else 'WRONG'}"
    reasons = "; ".join(f"rank {rank}: {short(named.get(rank, 'not dropped'), 90)}" for rank in sorted(roles))
    return AttackResult(
        "oversize-message", threat_model, verdict, figure,
        f"{where}; REPLY limit at AdvertiseKeys {report['limit']} bytes; {reasons}",
    )


# --- in memory: threads over local sockets ---------------------------------------------------------


def _in_memory(threat_model: str, honest: int) -> AttackResult:
    import torch.distributed as dist

    hosts, roles = _layout(honest, ["announced", "sent"])
    timeout = datetime.timedelta(seconds=TIMEOUT_S)
    master = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timeout)
    errors: dict[int, str] = {}

    def client(rank: int) -> None:
        try:
            store = dist.TCPStore("127.0.0.1", master.port, is_master=False, timeout=timeout)
            if rank in roles:
                _attack(store, rank, hosts, roles[rank], threat_model)
            else:
                _participate(store, rank, hosts, threat_model)
        except BaseException:  # noqa: BLE001 - reported in the result
            errors[rank] = traceback.format_exc(limit=3)

    threads = [threading.Thread(target=client, args=(rank,), name=f"attack-rank-{rank}", daemon=True) for rank in hosts]
    for thread in threads:
        thread.start()
    report, failure = None, None
    try:
        report = _serve(master, hosts, threat_model)
    except Exception as exc:  # noqa: BLE001 - a server that fails is the attack's success
        failure = f"{type(exc).__name__}: {exc}"
        logger.exception("the server failed under attack")
    for thread in threads:
        thread.join(TIMEOUT_S)
    for rank, text in errors.items():
        logger.info("attack scenario rank %d ended with: %s", rank, text.strip().splitlines()[-1])
    where = f"in memory: server + {honest} honest client links + {len(roles)} attackers over local TCP sockets"
    return _judge(threat_model, report, hosts, roles, where, failure)


# --- real processes -----------------------------------------------------------------------------


def _rank_main(rank: int, world_size: int, port: int, threat_model: str, out_dir: str, honest: int) -> None:
    """One rank of the processes world (entry point of torch.multiprocessing)."""
    from fedsim.transport.world import init_world, shutdown

    torch.set_num_threads(1)
    logging.getLogger().setLevel(logging.ERROR)  # the refusals are the point: keep them off the terminal
    hosts, roles = _layout(honest, ["sent"])
    world = init_world(rank=rank, world_size=world_size, local_rank=0, init_method=f"tcp://127.0.0.1:{port}", timeout_s=60.0)
    try:
        if rank == 0:
            report = _serve(world.store, hosts, threat_model)
            Path(out_dir, "server.json").write_text(json.dumps(report))
        elif rank in roles:
            _attack(world.store, rank, hosts, roles[rank], threat_model)
        else:
            _participate(world.store, rank, hosts, threat_model)
    except BaseException:
        Path(out_dir, f"error{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        shutdown()


def _processes(threat_model: str, honest: int) -> AttackResult:
    import torch.multiprocessing as mp

    hosts, roles = _layout(honest, ["sent"])
    world_size = 1 + len(hosts)
    with tempfile.TemporaryDirectory(prefix="fedsim-attack-") as out_dir:
        mp.get_context("forkserver").set_forkserver_preload([__name__])
        context = mp.start_processes(
            _rank_main, args=(world_size, _free_port(), threat_model, out_dir, honest), nprocs=world_size, join=False,
            start_method="forkserver",
        )
        deadline = time.monotonic() + 6 * TIMEOUT_S
        while any(p.is_alive() for p in context.processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        hung = [i for i, p in enumerate(context.processes) if p.is_alive()]
        for i in hung:
            context.processes[i].kill()
        codes = [p.exitcode for p in context.processes]
        server_file = Path(out_dir, "server.json")
        report = json.loads(server_file.read_text()) if server_file.exists() else None
        failure = None
        if report is None:
            error = Path(out_dir, "error0.txt")
            failure = (
                "hung" if 0 in hung else f"exit code {codes[0]}"
            ) + (f": {error.read_text().strip().splitlines()[-1]}" if error.exists() else "")
    where = f"processes: server + {honest} honest ranks + 1 attacker rank (exit codes {codes})"
    return _judge(threat_model, report, hosts, roles, where, failure)


def oversize_message(threat_model: str, *, clients: int = 2, processes: bool = False) -> AttackResult:
    """Oversize frames from a client process; BROKEN unless the server finishes and names the sender.

    ``clients``: the honest client processes (each hosting two virtual clients).
    """
    return _processes(threat_model, clients) if processes else _in_memory(threat_model, clients)
