"""The LoRA-adapted models every process builds.

:mod:`~fedsim.models.build` is the face (``build_model(spec)``); beside it the value object
:mod:`~fedsim.models.spec`, the text classifier :mod:`~fedsim.models.text`, the A/B/head
grouping :mod:`~fedsim.models.lora_params`, and the two fixes that make per-sample
gradients exact: :mod:`~fedsim.models.batchnorm` and :mod:`~fedsim.models.window_unfold`.
"""
