"""ModelSpec validation, model building, LoRA parameter groups, state and peft round trips."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model

from fedsim.models.build import (
    ModelSpec,
    build_base_model,
    build_model,
    build_tokenizer,
    factor_parameters,
    load_adapter,
    load_trainable_state,
    lora_config,
    tokenize,
    trainable_state,
)
from fedsim.models.text import masked_mean_pool
from fedsim.models.window_unfold import STATE_ATTR, fold_windows, unfold_windows

VIT_SPEC = ModelSpec(
    family="timm",
    name="vit_tiny_patch16_224",
    num_classes=4,
    img_size=32,
    model_kwargs={"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
    lora_rank=4,
)
SWIN_SPEC = ModelSpec(
    family="timm",
    name="swin_tiny_patch4_window7_224",
    num_classes=4,
    img_size=32,
    model_kwargs={
        "window_size": 4,
        "embed_dim": 16,
        "depths": (2, 2),
        "num_heads": (1, 2),
        "drop_path_rate": 0.0,
    },
    lora_rank=2,
)
TEXT_SPEC = ModelSpec(
    family="text",
    name="all-MiniLM-L6-v2",
    num_classes=3,
    pretrained=True,
    model_kwargs={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    max_length=16,
)
TEXTS = ["federated learning with differential privacy", "hello", "a b c"]


def perturb_trainables(model: torch.nn.Module, seed: int) -> None:
    """Move every A, B and head tensor away from its init so a round trip is a real test."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in factor_parameters(model).values():
            for param in group.values():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TEXT_SPEC)


@pytest.fixture(scope="module")
def text_model():
    return build_model(TEXT_SPEC)


@pytest.fixture(scope="module")
def text_inputs(tokenizer):
    return tokenize(tokenizer, TEXTS, TEXT_SPEC.max_length)


# --- ModelSpec -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"family": "jax"}, "family"),
        ({"name": ""}, "name"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"pretrained": "yes"}, "pretrained"),
        ({"img_size": -3}, "img_size"),
        ({"model_kwargs": {"num_classes": 3}}, "model_kwargs"),
        ({"model_kwargs": "depth=2"}, "model_kwargs"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"lora_alpha": float("nan")}, "lora_alpha"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"target_modules": ()}, "target_modules"),
        ({"target_modules": ("attn.qkv", "")}, "target_modules"),
        ({"max_length": 1}, "max_length"),
        ({"init_seed": -1}, "init_seed"),
    ],
)
def test_spec_rejects_bad_values_naming_the_field(overrides: dict, field: str) -> None:
    fields = {"family": "timm", "name": "vit_tiny_patch16_224", "num_classes": 3} | overrides
    with pytest.raises(ValueError, match=f"ModelSpec.{field}"):
        ModelSpec(**fields)


def test_spec_img_size_is_vision_only() -> None:
    with pytest.raises(ValueError, match="ModelSpec.img_size"):
        ModelSpec("text", "all-MiniLM-L6-v2", 2, img_size=32)


def test_spec_normalizes_kwargs_so_equal_specs_hash_equal() -> None:
    a = ModelSpec("timm", "vit_tiny_patch16_224", 3, model_kwargs={"depth": 2, "patch_size": 8})
    b = ModelSpec("timm", "vit_tiny_patch16_224", 3, model_kwargs=(("patch_size", 8), ("depth", 2)))
    assert a == b and hash(a) == hash(b)
    assert a.model_kwargs == (("depth", 2), ("patch_size", 8))


# --- building --------------------------------------------------------------------------


def test_timm_model_trains_only_lora_and_head() -> None:
    model = build_model(VIT_SPEC)
    assert isinstance(model, PeftModel)
    groups = factor_parameters(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for g in groups.values() for n in g}
    assert len(groups["A"]) == len(groups["B"]) == 2 * 2  # qkv + proj in 2 blocks
    assert all(".attn.qkv." in n or ".attn.proj." in n for n in groups["A"])
    assert {p.shape for p in groups["head"].values()} == {torch.Size([4, 32]), torch.Size([4])}
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_build_is_deterministic_per_init_seed() -> None:
    a, b = build_model(VIT_SPEC), build_model(VIT_SPEC)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    other = build_model(ModelSpec(**{**VIT_SPEC.__dict__, "init_seed": 1}))
    assert not torch.equal(
        a.state_dict()["base_model.model.patch_embed.proj.weight"],
        other.state_dict()["base_model.model.patch_embed.proj.weight"],
    )


def test_misspelled_target_module_is_reported() -> None:
    spec = ModelSpec(**{**VIT_SPEC.__dict__, "target_modules": ("attn.qkv", "attn.prj")})
    with pytest.raises(ValueError, match=r"ModelSpec.target_modules: \['attn.prj'\]"):
        build_model(spec)


def test_swinv2_qkv_lora_that_timm_bypasses_is_rejected() -> None:
    spec = ModelSpec(
        "timm",
        "swinv2_tiny_window8_256",
        3,
        img_size=32,
        model_kwargs={"window_size": 4, "embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2)},
    )
    with pytest.raises(ValueError, match="bypassed"):
        build_model(spec)


def test_build_tokenizer_needs_text_family() -> None:
    with pytest.raises(ValueError, match="ModelSpec.family='text'"):
        build_tokenizer(VIT_SPEC)


# --- the Swin window fix keeps names and outputs ---------------------------------------


def test_window_unfold_round_trip_is_exact() -> None:
    x = torch.randn(3 * 4, 16, 8)
    y = unfold_windows(x, batch_size=3)
    assert y.shape == (3, 4 * 16, 8)
    assert torch.equal(y[1], torch.cat(list(x[4:8])))  # rows of sample 1, batch-major
    assert torch.equal(fold_windows(y, x.shape[:-1]), x)
    with pytest.raises(RuntimeError, match="not a multiple"):
        unfold_windows(torch.randn(10, 16, 8), batch_size=3)


def test_swin_fix_changes_neither_names_nor_outputs() -> None:
    fixed = build_model(SWIN_SPEC)
    base = build_base_model(SWIN_SPEC)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SWIN_SPEC.init_seed)
        plain = get_peft_model(base, lora_config(SWIN_SPEC, base))
    assert getattr(fixed.get_base_model(), STATE_ATTR).unfolded == 2 * 2 * 2
    assert list(fixed.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(fixed.state_dict())
    images = torch.randn(3, 3, 32, 32)
    fixed.train(), plain.train()
    torch.testing.assert_close(fixed(images), plain(images), rtol=1e-5, atol=1e-6)


def test_swin_training_through_a_sub_forward_is_refused() -> None:
    model = build_model(SWIN_SPEC).train()
    with pytest.raises(RuntimeError, match="batch size is unknown"):
        model.get_base_model().forward_features(torch.randn(2, 3, 32, 32))
    with torch.no_grad():  # inference through a sub-forward stays allowed
        model.get_base_model().forward_features(torch.randn(2, 3, 32, 32))


# --- trainable state -------------------------------------------------------------------


def test_trainable_state_round_trip_and_key_checks() -> None:
    source, target = build_model(VIT_SPEC), build_model(VIT_SPEC)
    perturb_trainables(source, seed=0)
    state = trainable_state(source)
    assert set(state) == {n for g in factor_parameters(source).values() for n in g}
    load_trainable_state(target, state)
    images = torch.randn(2, 3, 32, 32)
    source.eval(), target.eval()
    torch.testing.assert_close(source(images), target(images))

    name = next(iter(state))
    with pytest.raises(ValueError, match="missing keys"):
        load_trainable_state(target, {k: v for k, v in state.items() if k != name})
    with pytest.raises(ValueError, match="unexpected keys"):
        load_trainable_state(target, {**state, "nope.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="has shape"):
        load_trainable_state(target, {**state, name: torch.zeros(1, 1, 1)})


def test_factor_parameters_groups_ignore_requires_grad_flags() -> None:
    model = build_model(VIT_SPEC)
    for param in factor_parameters(model)["A"].values():
        param.requires_grad_(False)  # an alternating algorithm freezing A this step
    groups = factor_parameters(model)
    assert len(groups["A"]) == 4 and all(not p.requires_grad for p in groups["A"].values())


# --- text model ------------------------------------------------------------------------


def test_tokenize_pads_and_truncates_to_max_length(tokenizer) -> None:
    ids, mask = tokenize(tokenizer, ["short", "word " * 50], max_length=8)
    assert ids.shape == mask.shape == (2, 8)
    assert ids.dtype == torch.int64
    assert mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]  # [CLS] short [SEP] + padding
    assert mask[1].tolist() == [1] * 8
    with pytest.raises(ValueError, match="single str"):
        tokenize(tokenizer, "not a list", max_length=8)


def test_masked_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(masked_mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_text_model_lora_targets_and_call_convention(text_model, text_inputs) -> None:
    groups = factor_parameters(text_model)
    assert len(groups["A"]) == 6 * 4  # 6 layers x (query, key, value, attention.output.dense)
    ffn = [n for n in groups["A"] if "intermediate" in n or ".layer." in n and "attention" not in n]
    assert not ffn  # the FFN's output.dense must not be matched by "attention.output.dense"
    assert text_model(*text_inputs).shape == (3, 3)


def test_text_padding_does_not_change_logits(text_model, tokenizer) -> None:
    text_model.eval()
    short = text_model(*tokenize(tokenizer, TEXTS[:1], max_length=12))
    long = text_model(*tokenize(tokenizer, TEXTS[:1], max_length=32))
    torch.testing.assert_close(short, long, rtol=1e-4, atol=1e-5)


# --- peft round trips ------------------------------------------------------------------


def test_vit_save_pretrained_round_trip(tmp_path) -> None:
    model = build_model(VIT_SPEC)
    perturb_trainables(model, seed=1)
    model.save_pretrained(tmp_path)
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    expected = model(images)

    reloaded = PeftModel.from_pretrained(build_base_model(VIT_SPEC), tmp_path).eval()
    torch.testing.assert_close(reloaded(images), expected)
    via_helper = load_adapter(VIT_SPEC, tmp_path).eval()
    torch.testing.assert_close(via_helper(images), expected)
    assert any(p.requires_grad for p in via_helper.parameters())


def test_text_save_pretrained_round_trip(tmp_path, text_model, text_inputs) -> None:
    model = copy.deepcopy(text_model)
    perturb_trainables(model, seed=2)
    model.save_pretrained(tmp_path)
    model.eval()
    expected = model(*text_inputs)

    reloaded = PeftModel.from_pretrained(build_base_model(TEXT_SPEC), tmp_path).eval()
    torch.testing.assert_close(reloaded(*text_inputs), expected)
    assert not torch.allclose(text_model.eval()(*text_inputs), expected)  # state did move


def test_load_adapter_rejects_a_different_rank(tmp_path) -> None:
    build_model(VIT_SPEC).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="lora_rank"):
        load_adapter(ModelSpec(**{**VIT_SPEC.__dict__, "lora_rank": 8}), tmp_path)
