"""Privacy accounting for fedsim: mechanisms, PRV/RDP composition, ledger, budgets.

Independent of ``fedsim``, ``secagg``, ``cli`` and ``torch``.
"""

from .budget import client_epsilons, client_mechanisms
from .ledger import Ledger, LedgerError, LedgerRecord, read_ledger
from .mechanisms import Mechanism, PoissonSubsampledGaussian, mechanism_from_dict, merge_mechanisms
from .prv import (
    METHOD_ANALYTIC_GAUSSIAN,
    METHOD_NONE,
    METHOD_PRV,
    METHOD_RDP,
    EpsilonBound,
    composed_gaussian_mu,
    gaussian_delta,
    gaussian_epsilon,
    prv_epsilon,
)
from .rdp import DEFAULT_ORDERS, compose_rdp, rdp_epsilon, rdp_to_epsilon

__all__ = [
    "DEFAULT_ORDERS",
    "METHOD_ANALYTIC_GAUSSIAN",
    "METHOD_NONE",
    "METHOD_PRV",
    "METHOD_RDP",
    "EpsilonBound",
    "Ledger",
    "LedgerError",
    "LedgerRecord",
    "Mechanism",
    "PoissonSubsampledGaussian",
    "client_epsilons",
    "client_mechanisms",
    "compose_rdp",
    "composed_gaussian_mu",
    "gaussian_delta",
    "gaussian_epsilon",
    "mechanism_from_dict",
    "merge_mechanisms",
    "prv_epsilon",
    "rdp_epsilon",
    "rdp_to_epsilon",
    "read_ledger",
]
