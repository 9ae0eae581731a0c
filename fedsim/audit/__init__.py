"""``fedsim audit``: a one-run empirical privacy audit of the training pipeline (Steinke, Nasr, Jagielski, NeurIPS 2023).

:mod:`~fedsim.audit.canaries` (white-box gradient canaries and the hook that injects them),
:mod:`~fedsim.audit.observers` (what the auditor sees and how it scores each canary),
:mod:`~fedsim.audit.bound` (guesses and the ε lower bound they prove),
:mod:`~fedsim.audit.driver` (one audited run beside the accountant's ε, and its control).
"""
