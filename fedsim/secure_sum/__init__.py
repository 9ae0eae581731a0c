"""Secure summation of client updates over the relay, built on :mod:`secagg`: the run's
protocol settings (:mod:`~fedsim.secure_sum.config`), one secure sum at the server and at
a client (:mod:`~fedsim.secure_sum.exchange`), the stage driver
(:mod:`~fedsim.secure_sum.stages`) and injected dropouts
(:mod:`~fedsim.secure_sum.dropouts`)."""
