"""Every DP coin comes from the ChaCha20 CSPRNG of fedsim.dp.randomness, never from torch.

Attacks first: a stream that repeats across instances, noise that follows torch's seed or
consumes torch's generator, a Poisson sampler that is not per-record independent, and any
draw in fedsim that bypasses the one auditable module.
"""

from __future__ import annotations

import io
import math
import re
import tokenize

import pytest
import torch
from torch.utils.data import TensorDataset

from fedsim.client.trainer import poisson_batches
from fedsim.dp.optimizer import FactorwiseDPOptimizer
from fedsim.dp.randomness import (
    FLOAT64_DRAWS,
    KEY_BYTES,
    SecretRandom,
    normal_draws,
    secret_random,
)
from fedsim.population import CohortSampling
from tests.support import REPO_ROOT
from tests.support.stats import chi_square_critical
from tests.support.tiny_lora import tiny_client, train

KEY = bytes(range(KEY_BYTES))
Z = 5.0  # every statistical check below is at 5 standard errors: false alarm < 1e-6 each


# --- the generator -------------------------------------------------------------------------


def test_two_instances_give_different_streams() -> None:
    a, b = secret_random(), secret_random()
    assert a.key() != b.key()
    assert not torch.equal(a.normal(64), b.normal(64))
    assert "hidden" in repr(a) and a.key().hex() not in repr(a)


def test_a_fixed_key_reproduces_and_another_key_does_not() -> None:
    def stream(key: bytes) -> tuple:
        rng = SecretRandom(key)
        return rng.normal(100).tolist(), rng.bernoulli_mask(100, 0.3).tolist(), rng.key(), rng.sample_without_replacement(50, 5)

    assert stream(KEY) == stream(KEY)
    assert stream(KEY) != stream(bytes(KEY_BYTES))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: SecretRandom(bytes(16)), "key must be 32 bytes \\(256 bits\\), got 16 bytes"),
        (lambda: SecretRandom(12345), "key must be 32 bytes \\(256 bits\\), got int"),  # type: ignore[arg-type]
        (lambda: SecretRandom(KEY).normal(3, std=-1.0), "std must be finite and >= 0, got -1.0"),
        (lambda: SecretRandom(KEY).normal(3, dtype=torch.int32), "dtype must be a floating-point torch dtype"),
        (lambda: SecretRandom(KEY).bernoulli_mask(3, 1.5), "p must be in \\[0, 1\\], got 1.5"),
        (lambda: SecretRandom(KEY).sample_without_replacement(3, 4), "k must be an int in \\[0, 3\\], got 4"),
    ],
)
def test_bad_arguments_name_the_field(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_normal_has_its_std_in_float32_and_float64() -> None:
    n = 40_000
    for dtype in (torch.float32, torch.float64):
        x = SecretRandom(KEY).normal(n, std=2.5, dtype=dtype).double()
        se = 2.5 / math.sqrt(2 * n)  # standard error of the sample std
        assert abs(float(x.std()) - 2.5) < Z * se, dtype
        assert abs(float(x.mean())) < Z * 2.5 / math.sqrt(n), dtype
        inside = float((x.abs() < 2.5).double().mean())  # P(|N(0, s²)| < s) = 0.6827
        assert abs(inside - 0.682689) < Z * math.sqrt(0.6827 * 0.3173 / n), dtype


def test_float32_noise_is_one_float64_draw_rounded_once() -> None:
    """Not a sampler run at float32 precision (whose 23-bit lattice leaves gaps, Jin et al. 2022):
    float32 noise is the float64 draw rounded once; float64 noise sums FLOAT64_DRAWS draws."""
    assert normal_draws(torch.float32) == normal_draws(torch.bfloat16) == 1 and normal_draws(torch.float64) == FLOAT64_DRAWS
    wide = SecretRandom(KEY).numpy.standard_normal(1000) * 0.7
    assert torch.equal(SecretRandom(KEY).normal(1000, std=0.7), torch.from_numpy(wide).float())
    rng = SecretRandom(KEY).numpy
    summed = sum(rng.standard_normal(1000) for _ in range(FLOAT64_DRAWS)) * (0.7 / math.sqrt(FLOAT64_DRAWS))
    torch.testing.assert_close(SecretRandom(KEY).normal(1000, std=0.7, dtype=torch.float64), torch.from_numpy(summed), rtol=1e-15, atol=0)


def test_sample_without_replacement_is_uniform_over_elements() -> None:
    rng, population, k, trials = SecretRandom(KEY), 20, 5, 4000
    counts = [0] * population
    for _ in range(trials):
        drawn = rng.sample_without_replacement(population, k)
        assert len(set(drawn)) == k and all(0 <= i < population for i in drawn)
        for i in drawn:
            counts[i] += 1
    p = k / population  # each count ~ Binomial(trials, p), pairwise covariance -trials p(1-p)/(P-1)
    chi2 = sum((c - trials * p) ** 2 for c in counts) / (trials * p * (1 - p) * population / (population - 1))
    assert chi2 < chi_square_critical(population - 1, Z)


# --- DP-SGD noise ----------------------------------------------------------------------------


def _noise_only_optimizer(rng: SecretRandom, shapes, *, sigma: float, clip: float, batch: int = 1):
    """A FactorwiseDPOptimizer over bare parameters whose per-sample gradients we set by hand."""
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in shapes]
    optimizer = FactorwiseDPOptimizer(
        torch.optim.SGD(params, lr=1.0),
        factor_of={p: "head" for p in params},
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=batch,
        rng=rng,
    )
    return optimizer, params


def _dp_gradients(optimizer, params, grad_samples) -> list[torch.Tensor]:
    optimizer.zero_grad()
    for p, g in zip(params, grad_samples):
        p.grad_sample = g
    assert optimizer.pre_step()
    return [p.grad.detach().clone() for p in params]


def test_optimizer_noise_has_std_sigma_c() -> None:
    sigma, clip, n = 1.3, 0.7, 30_000
    optimizer, params = _noise_only_optimizer(secret_random(), [(n,)], sigma=sigma, clip=clip)
    (noise,) = _dp_gradients(optimizer, params, [torch.zeros((0, n))])  # empty batch: noise only
    std = sigma * clip
    assert abs(float(noise.std()) - std) < Z * std / math.sqrt(2 * n)
    assert abs(float(noise.mean())) < Z * std / math.sqrt(n)


def test_optimizer_adds_exactly_the_csprng_draw_then_scales() -> None:
    """Opacus's semantics: grad = (Σ clipped per-sample grads + N(0, σ²C²)) / E[B], the noise of
    all active parameters drawn in one go, in their order, from the optimizer's SecretRandom."""
    sigma, clip, batch, shapes = 0.9, 1.0, 4, [(3, 2), (5,)]
    optimizer, params = _noise_only_optimizer(SecretRandom(KEY), shapes, sigma=sigma, clip=clip, batch=batch)
    samples = [torch.full((batch, *s), 0.01) for s in shapes]  # norms far below C: not clipped
    got = _dp_gradients(optimizer, params, samples)
    noise = SecretRandom(KEY).normal(6 + 5, std=sigma * clip)
    expected = [(s.sum(0) + part.view(s.shape[1:])) / batch for s, part in zip(samples, torch.split(noise, [6, 5]))]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-7)


def test_noise_ignores_and_leaves_torch_random_state() -> None:
    """An attacker who knows (or sets) torch's seed learns nothing of the noise, and the
    noise draw consumes nothing from torch's generator."""
    draws = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        optimizer, params = _noise_only_optimizer(SecretRandom(KEY), [(1000,)], sigma=1.0, clip=1.0)
        state = torch.get_rng_state()
        draws.append(_dp_gradients(optimizer, params, [torch.zeros((0, 1000))])[0])
        assert torch.equal(torch.get_rng_state(), state)
        torch.manual_seed(seed)
        assert not torch.allclose(draws[-1], torch.randn(1000), atol=0.1)  # not torch's stream
    assert torch.equal(draws[0], draws[1])  # fixed key: torch's seed changed nothing


def test_same_public_seed_does_not_reproduce_a_client_update() -> None:
    """Replaying the run's public seed (data, init, torch seed) does not give the noisy update."""
    updates = []
    for _ in range(2):
        client, shard, _ = tiny_client("dp-lora", noise=1.0, clip=1.0)  # torch.manual_seed(0) inside
        torch.manual_seed(0)
        updates.append(train(client, shard, 2)[0])
    assert not torch.equal(updates[0], updates[1])


# --- Poisson sampling ----------------------------------------------------------------------


def test_poisson_batches_have_mean_size_nq_and_independent_records() -> None:
    n, q, batches = 40, 0.2, 3000
    dataset = TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n))
    stream = poisson_batches(dataset, q, SecretRandom(KEY))
    counts = torch.zeros(n)
    both = 0  # batches holding records 0 and 1 together
    sizes = []
    for _ in range(batches):
        x, y = next(stream)
        assert torch.equal(x[:, 0].long(), y)  # rows stay aligned across tensors
        counts[y] += 1
        both += int(0 in y and 1 in y)
        sizes.append(len(y))
    sizes_t = torch.tensor(sizes, dtype=torch.float64)
    # Size ~ Binomial(n, q): its mean and variance (a fixed-size sampler would have variance 0).
    assert abs(float(sizes_t.mean()) - n * q) < Z * math.sqrt(n * q * (1 - q) / batches)
    assert abs(float(sizes_t.var()) / (n * q * (1 - q)) - 1) < Z * math.sqrt(2 / batches)
    # Each record's inclusion count ~ Binomial(batches, q): chi-square over records.
    chi2 = float(((counts - batches * q) ** 2).sum()) / (batches * q * (1 - q))
    assert chi2 < chi_square_critical(n, Z)
    # Pairwise independence: P(0 and 1 in one batch) = q².
    assert abs(both / batches - q * q) < Z * math.sqrt(q * q * (1 - q * q) / batches)


def test_poisson_batches_can_be_empty_with_the_right_shapes() -> None:
    dataset = TensorDataset(torch.zeros(3, 6), torch.zeros(3, dtype=torch.long))
    stream = poisson_batches(dataset, 0.05, SecretRandom(KEY))
    empty = next(b for b in (next(stream) for _ in range(500)) if len(b[1]) == 0)
    assert empty[0].shape == (0, 6) and empty[1].dtype == torch.long


def test_poisson_batches_ignore_torch_seed() -> None:
    dataset = TensorDataset(torch.arange(30))
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        stream = poisson_batches(dataset, 0.3, SecretRandom(KEY))
        runs.append([next(stream)[0].tolist() for _ in range(10)])
    assert runs[0] == runs[1]


def test_poisson_cohorts_have_rate_q_per_client() -> None:
    sampling, population, rounds = CohortSampling("poisson", rate=0.1), 50, 1000
    counts = [0] * population
    for _ in range(rounds):
        for c in sampling.sample(population):
            counts[c - 1] += 1
    chi2 = sum((c - rounds * 0.1) ** 2 for c in counts) / (rounds * 0.1 * 0.9)
    assert chi2 < chi_square_critical(population, Z)


# --- the auditor's check: no DP draw outside fedsim/dp/randomness.py ------------------------

SAMPLERS = re.compile(
    r"torch\.(randn|rand|randint|randperm|normal|bernoulli|poisson|multinomial|Generator|manual_seed)\b"
    r"|\.(normal_|uniform_|bernoulli_|random_|exponential_|geometric_|cauchy_|log_normal_)\("
    r"|torch\.distributions|\b(np|numpy)\.random\.(?!Generator\b)\w+|\brandomgen\b|random\.Random|random\.SystemRandom"
    r"|^\s*(import random|from random import)|secret_generator|DPDataLoader|UniformWithReplacementSampler"
)

PUBLIC_OR_PENDING = {
    "fedsim/dp/randomness.py": "the one module of secret draws",
    "fedsim/data/partition.py": "public seed: the data split and partition",
    "fedsim/data/loaders.py": "public seed: the train/test subsampling of the bundled data",
    "fedsim/models/build.py": "public seed: LoRA initialisation, identical in every process",
    "fedsim/audit/bound.py": "the auditor's own tie-breaking coins (the adversary's), not a DP draw",
    "fedsim/attacks/": "adversary simulations: seeded test data, not DP draws",
}


def code_lines(source: str) -> list[str]:
    """``source``'s lines with every string literal and comment blanked (docstrings may name samplers)."""
    lines = [list(line) for line in source.splitlines()]
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.STRING, tokenize.COMMENT):
            (row, col), (end_row, end_col) = token.start, token.end
            for r in range(row, end_row + 1):
                line = lines[r - 1]
                lo, hi = (col if r == row else 0), (end_col if r == end_row else len(line))
                line[lo:hi] = " " * (hi - lo)
    return ["".join(line) for line in lines]


def test_no_dp_draw_bypasses_the_randomness_module() -> None:
    offenders = []
    for path in sorted((REPO_ROOT / "fedsim").rglob("*.py")):
        rel = path.relative_to(REPO_ROOT).as_posix()
        if any(rel == allowed or (allowed.endswith("/") and rel.startswith(allowed)) for allowed in PUBLIC_OR_PENDING):
            continue
        for number, code in enumerate(code_lines(path.read_text(encoding="utf-8")), start=1):
            if SAMPLERS.search(code):
                offenders.append(f"{rel}:{number}: {code.strip()}")
    assert not offenders, "random draws outside fedsim/dp/randomness.py:\n" + "\n".join(offenders)


def test_the_audit_pattern_catches_a_torch_draw() -> None:
    """The check above can fail: each kind of bypass it looks for is matched."""
    for line in ("noise = torch.randn(d, generator=g)", "g = torch.Generator()", "x.normal_(0, s)",
                 "rng = random.Random(0)", "import random", "np.random.default_rng()", "DPDataLoader(ds)",
                 "np.random.Generator(np.random.PCG64(7))", "randomgen.AESCounter(key=k)"):
        assert SAMPLERS.search(line), line
    for line in ("rng.normal(d, std=s)", "def f(rng: np.random.Generator) -> None:"):  # a SecretRandom's use, a type
        assert not SAMPLERS.search(line), line
    hidden = code_lines('x = 1  # torch.randn\n"""torch.Generator\nDPDataLoader"""\ny = torch.rand(3)\n')
    assert [bool(SAMPLERS.search(line)) for line in hidden] == [False, False, False, True]


def test_the_allowlisted_public_draws_are_named_public_in_the_module_docstring() -> None:
    doc = (REPO_ROOT / "fedsim/dp/randomness.py").read_text(encoding="utf-8")
    for public in ("data split", "partition", "LoRA initialisation", "injected dropouts"):
        assert public in doc


# --- the audit's hook: rows added before the step are clipped and noised like records ------


def test_before_step_rows_go_through_clipping() -> None:
    """A gradient canary of norm 1e3 appended by ``before_step`` moves its coordinate by C / E[B]."""
    from fedsim.client.trainer import OptimSettings

    clip = 0.5
    client, shard, factors = tiny_client("dp-lora", noise=0.0, clip=clip, optimizer="sgd", lr=1.0)
    client.optim = OptimSettings("sgd", 1.0, 1.0, 1.0, 0.0)  # plain clipped SGD, lr 1, no smoothing
    shard.batches = iter([(torch.zeros((0, 6)), torch.zeros((0,), dtype=torch.long))])
    seen, target = [], []

    def before_step(step, params):
        seen.append([p.grad_sample.shape[0] for p in params])
        target.extend([params[0], params[0].detach().clone()])
        for i, p in enumerate(params):
            row = torch.zeros((1, *p.shape))
            if i == 0:
                row.view(-1)[0] = 1e3
            p.grad_sample = torch.cat([p.grad_sample, row])

    global_vector = torch.cat([client.params[n].detach().reshape(-1) for n in client.method.all_sent_names(factors)])
    client.train_phase(shard, global_vector, client.method.phases(1)[0], 1, before_step=before_step)
    assert seen == [[0] * len(seen[0])] and len(seen[0]) > 1  # every active parameter, empty batch
    moved = (target[0].detach() - target[1]).reshape(-1)
    assert float(moved[0]) == pytest.approx(-clip / 16, rel=1e-5)  # clipped to C, scaled by 1 / E[B] = 1/16
    assert torch.count_nonzero(moved[1:]) == 0
