"""The server (rank 0): the round loop (:mod:`~fedsim.server.loop`), its side effects as
callbacks (:mod:`~fedsim.server.callbacks`), ledger records and report gathering
(:mod:`~fedsim.server.records`), the adapter checkpoint
(:mod:`~fedsim.server.checkpoint`) and central evaluation
(:mod:`~fedsim.server.evaluation`)."""
