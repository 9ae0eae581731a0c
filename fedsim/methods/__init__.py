"""The federated LoRA methods: :mod:`~fedsim.methods.registry` (each method as phases, with
its own flags) and LA-LoRA's :mod:`~fedsim.methods.smoothing`."""
