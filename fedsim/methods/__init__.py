"""The federated LoRA methods: :mod:`~fedsim.methods.registry` (each method as phases, with
its own flags), LA-LoRA's :mod:`~fedsim.methods.smoothing` and DEeR's noise regulator
:mod:`~fedsim.methods.deer`."""
