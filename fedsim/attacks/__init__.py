"""Named adversaries against the secure-aggregation layer (``fedsim attack``).

Each scenario attacks the real classes (``secagg.ServerRound`` / ``ClientRound``, the
fixed-point codec and its range check, the relay) and computes its verdict from what
happened: :mod:`fedsim.attacks.registry` lists them with the verdict each threat model is
documented to give. Modules, one family each:

- :mod:`~fedsim.attacks.lies`: a deviating server (``dropout-lie``, ``key-substitution``);
- :mod:`~fedsim.attacks.requests`: forged and replayed requests (``both-shares``, ``replay``);
- :mod:`~fedsim.attacks.graph_leak`: partial sums after real dropouts (``partial-sum``);
- :mod:`~fedsim.attacks.bad_clients`: malicious clients (``bad-ciphertext``,
  ``false-accusation``, ``bad-share``, ``out-of-range-input``);
- :mod:`~fedsim.attacks.transport`: a client process against the relay (``oversize-message``);
- :mod:`~fedsim.attacks.distinguisher`: statistics on the server's view
  (``transcript-distinguisher``);
- :mod:`~fedsim.attacks.rounds`: the in-memory round they share, and the wire helpers.

Importing this package (or the registry) loads no torch.
"""
