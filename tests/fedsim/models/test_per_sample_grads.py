"""Opacus per-sample gradients on fedsim models match gradients taken one sample at a time.

Each test builds a tiny model, gives the LoRA B factors non-zero values (at init B = 0,
which makes dL/dA = 0 and hides errors in A), computes reference gradients by running
each sample alone, then compares with `GradSampleModule` (hooks mode, mean loss).
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from opacus import GradSampleModule
from peft import get_peft_model
from torch.nn.modules.batchnorm import _BatchNorm

from fedsim.models.batchnorm import neutralize_batchnorm
from fedsim.models.build import (
    ModelSpec,
    build_base_model,
    build_model,
    build_tokenizer,
    factor_parameters,
    lora_config,
    tokenize,
)

# Opacus warns that full backward hooks fire with no input requiring grad: expected here
# (images and token ids never require grad), harmless for per-sample gradients.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")

REL_TOL = 1e-4
BATCH = 4

SWIN_SPEC = ModelSpec(
    family="timm",
    name="swin_tiny_patch4_window7_224",
    num_classes=5,
    img_size=32,
    # 32 px / patch 4 = 8x8 tokens, windows of 4x4 -> 4 windows per image in stage 1
    # (depth 2: the second block is the shifted-window one, with its attention mask).
    model_kwargs={
        "window_size": 4,
        "embed_dim": 16,
        "depths": (2, 2),
        "num_heads": (1, 2),
        "drop_path_rate": 0.0,  # timm Swin defaults to 0.1 stochastic depth: random
    },
    lora_rank=2,
)
SWIN_STAGE1_WINDOWS = 4

VIT_SPEC = ModelSpec(
    family="timm",
    name="vit_tiny_patch16_224",
    num_classes=5,
    img_size=32,
    model_kwargs={"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
    lora_rank=2,
)

MOBILENET_SPEC = ModelSpec(
    family="timm",
    name="mobilenetv3_small_050",
    num_classes=5,
    target_modules=("conv_head",),  # a CNN has no attention: LoRA on the 1x1 head conv
    lora_rank=2,
)

TEXT_SPEC = ModelSpec(
    family="text",
    name="all-MiniLM-L6-v2",
    num_classes=3,
    pretrained=True,
    model_kwargs={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    max_length=12,
)


def randomize_lora_b(model: nn.Module, seed: int = 1) -> None:
    """Give every B factor small random values so dL/dA is not identically zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in factor_parameters(model)["B"].values():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def reference_grads(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-sample gradients the slow, obviously correct way: one sample per backward."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    per_sample: dict[str, list[torch.Tensor]] = {n: [] for n in params}
    for i in range(labels.shape[0]):
        model.zero_grad(set_to_none=True)
        logits = model(*(t[i : i + 1] for t in inputs))
        F.cross_entropy(logits, labels[i : i + 1]).backward()
        for name, param in params.items():
            per_sample[name].append(param.grad.detach().clone())
    model.zero_grad(set_to_none=True)
    return {name: torch.stack(grads) for name, grads in per_sample.items()}


def opacus_grads(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-sample gradients from Opacus' GradSampleModule in hooks mode (mean loss)."""
    gsm = GradSampleModule(model, loss_reduction="mean")
    try:
        F.cross_entropy(gsm(*inputs), labels).backward()
        return {
            name: param.grad_sample.detach().clone()
            for name, param in model.named_parameters()
            if param.requires_grad
        }
    finally:
        gsm.cleanup()
        model.zero_grad(set_to_none=True)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm().clamp(min=1e-12)).item()


def assert_per_sample_grads_match(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor
) -> None:
    model.train()
    expected = reference_grads(model, inputs, labels)
    actual = opacus_grads(model, inputs, labels)
    groups = factor_parameters(model)
    assert set(actual) == {n for g in groups.values() for n in g}, "trainable set changed"
    for name, ref in expected.items():
        assert ref.norm() > 0, f"{name}: zero reference gradient proves nothing"
        assert actual[name].shape == ref.shape, (name, actual[name].shape, ref.shape)
        err = relative_error(actual[name], ref)
        assert err < REL_TOL, f"{name}: relative error {err:.2e}"


def image_batch(seed: int = 0) -> tuple[tuple[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(BATCH, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 5, (BATCH,), generator=generator)
    return (images,), labels


# --- trap 1: Swin folds windows into the batch dimension -------------------------------


def test_swin_per_sample_grads_match_with_fix() -> None:
    model = build_model(SWIN_SPEC)
    randomize_lora_b(model)
    assert_per_sample_grads_match(model, *image_batch())


def test_swin_without_fix_opacus_grads_are_per_window_and_wrong() -> None:
    base = build_base_model(SWIN_SPEC)
    model = get_peft_model(base, lora_config(SWIN_SPEC, base))  # no prepare_for_dp
    randomize_lora_b(model)
    model.train()
    inputs, labels = image_batch()
    expected = reference_grads(model, inputs, labels)
    actual = opacus_grads(model, inputs, labels)
    stage1 = [n for n in expected if ".layers.0." in n and "lora_" in n]
    assert stage1
    for name in stage1:
        # one "sample" per window, not per image ...
        assert actual[name].shape[0] == BATCH * SWIN_STAGE1_WINDOWS
        # ... and even summed back per image the values are wrong (mean-loss rescaling
        # used B * nW instead of B), so no downstream regrouping could rescue them.
        regrouped = actual[name].reshape(BATCH, SWIN_STAGE1_WINDOWS, *expected[name].shape[1:])
        assert relative_error(regrouped.sum(dim=1), expected[name]) > 0.5


def test_swin_fix_survives_deepcopy() -> None:
    import copy

    model = copy.deepcopy(build_model(SWIN_SPEC))
    randomize_lora_b(model)
    assert_per_sample_grads_match(model, *image_batch(seed=3))


# --- trap 2: batch norm mixes samples --------------------------------------------------


def test_batchnorm_act_is_neutralized_and_per_sample_grads_match() -> None:
    raw = timm.create_model(MOBILENET_SPEC.name, pretrained=False, num_classes=5)
    raw_kinds = {type(m).__name__ for m in raw.modules() if isinstance(m, _BatchNorm)}
    assert "BatchNormAct2d" in raw_kinds  # the layer Opacus' validator does not flag

    model = build_model(MOBILENET_SPEC)
    assert not [m for m in model.modules() if isinstance(m, _BatchNorm)]
    buffers_before = {n: b.clone() for n, b in model.named_buffers()}

    model.train()
    inputs, labels = image_batch()
    with torch.no_grad():
        together = model(*inputs)
        alone = torch.cat([model(inputs[0][i : i + 1]) for i in range(BATCH)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)  # no batch mixing
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers_before[name]), f"{name} updated in train mode"

    randomize_lora_b(model)
    assert_per_sample_grads_match(model, inputs, labels)


def test_neutralize_batchnorm_counts_every_layer() -> None:
    model = timm.create_model(MOBILENET_SPEC.name, pretrained=False, num_classes=5)
    expected = sum(isinstance(m, _BatchNorm) for m in model.modules())
    assert expected > 0
    assert neutralize_batchnorm(model) == expected
    assert neutralize_batchnorm(model) == 0


def test_unneutralized_batchnorm_mixes_samples() -> None:
    """Why trap 2 matters: in train mode a raw timm CNN's outputs depend on batch-mates."""
    model = timm.create_model(MOBILENET_SPEC.name, pretrained=False, num_classes=5).train()
    (images,), _ = image_batch()
    with torch.no_grad():
        together = model(images)[0]
        with_others = model(torch.cat([images[:1], 3 * images[1:]]))[0]
    assert not torch.allclose(together, with_others, atol=1e-4)


def test_batchnorm_without_frozen_equivalent_is_rejected() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        neutralize_batchnorm(model)


# --- trap 3: ViT and the text model ----------------------------------------------------


def test_vit_per_sample_grads_match() -> None:
    model = build_model(VIT_SPEC)
    randomize_lora_b(model)
    assert_per_sample_grads_match(model, *image_batch())


@pytest.fixture(scope="module")
def text_model_and_tokenizer():
    return build_model(TEXT_SPEC), build_tokenizer(TEXT_SPEC)


def test_text_per_sample_grads_match(text_model_and_tokenizer) -> None:
    model, tokenizer = text_model_and_tokenizer
    randomize_lora_b(model)
    texts = ["a short one", "the quick brown fox jumps over the lazy dog again", "hi"]
    inputs = tokenize(tokenizer, texts, TEXT_SPEC.max_length)
    assert inputs[1].sum(dim=1).tolist()[2] < TEXT_SPEC.max_length  # padding present
    assert_per_sample_grads_match(model, inputs, torch.tensor([0, 2, 1]))
