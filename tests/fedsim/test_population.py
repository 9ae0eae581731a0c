"""Virtual clients over processes and cohort sampling."""

import pytest

from fedsim.population import CohortSampling, Population


def test_every_client_has_exactly_one_host_and_hosts_are_balanced():
    pop = Population(size=1000, processes=3)
    hosted = [pop.hosted_by(r) for r in (1, 2, 3)]
    assert sorted(c for h in hosted for c in h) == list(range(1, 1001))
    assert {len(h) for h in hosted} == {333, 334}
    assert all((c - 1) % 3 == r - 1 for r, h in zip((1, 2, 3), hosted) for c in h)  # round-robin


@pytest.mark.parametrize(
    "kwargs, field",
    [({"size": 2, "processes": 3}, "population=2"), ({"size": 5, "processes": 0}, "processes=0")],
)
def test_bad_population_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Population(**kwargs)


def test_fixed_cohort_has_its_size_and_no_amplification():
    sampling = CohortSampling("fixed", size=50)
    cohort = sampling.sample(1000)
    assert len(cohort) == 50 == len(set(cohort)) and all(1 <= c <= 1000 for c in cohort)
    assert sampling.expected_size(1000) == 50 and sampling.accounting_name == "fixed_size"


def test_poisson_cohort_size_is_binomial_and_draws_differ():
    sampling = CohortSampling("poisson", rate=0.05)
    sizes = [len(sampling.sample(1000)) for _ in range(200)]
    mean = sum(sizes) / len(sizes)
    # Binomial(1000, 0.05): mean 50, sd 6.9; the mean of 200 draws has sd 0.49
    assert 47 < mean < 53
    assert len({sampling.sample(1000) for _ in range(5)}) == 5  # CSPRNG, not a fixed seed
    assert sampling.expected_size(1000) == 50 and sampling.accounting_name == "poisson"


@pytest.mark.parametrize("rate, population", [(0.033, 100), (0.05, 1000), (0.5, 3), (1e-4, 100), (1.0, 7), (0.3, 10)])
def test_the_recorded_poisson_rate_is_never_below_the_true_one(rate, population):
    """The ledger's q = cohort_size / population: rounding the expected size down (0.033 x 100 -> 3)
    would state a smaller q than the cohorts were drawn with, and under-state ε against observers."""
    k = CohortSampling("poisson", rate=rate).accounted_size(population)
    assert k / population >= rate and (k - 1) / population < rate or k == 1


@pytest.mark.parametrize(
    "kwargs, field",
    [({"kind": "round-robin"}, "cohort='round-robin'"), ({"kind": "poisson", "rate": 0.0}, "cohort_rate=0.0"),
     ({"kind": "fixed", "size": 0}, "cohort_size=0")],
)
def test_bad_cohort_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CohortSampling(**kwargs)
