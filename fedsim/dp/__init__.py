"""Differential privacy on the client: the per-factor DP-SGD step
(:mod:`~fedsim.dp.optimizer`), client-level DP with distributed noise
(:mod:`~fedsim.dp.client_level`), and every secret random source in one file to audit
(:mod:`~fedsim.dp.randomness`)."""
