"""Datasets: :mod:`~fedsim.data.loaders` (names, files, model-ready tensors) and
:mod:`~fedsim.data.partition` (seeded client shards: IID or Dirichlet non-IID)."""
