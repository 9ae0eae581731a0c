"""Datasets: :mod:`~fedsim.data.loaders` (names → model-ready tensors, seeded splits),
:mod:`~fedsim.data.sources` (one reader per source: bundled, scikit-learn, local files) and
:mod:`~fedsim.data.partition` (seeded client shards: IID or Dirichlet non-IID)."""
