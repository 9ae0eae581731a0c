"""``--checkpoint``: timm files and transformers directories loaded before LoRA, with the keys named."""

from __future__ import annotations

import dataclasses
import json
import logging
import re

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

from fedsim.config import ConfigError, build_config
from fedsim.models.build import (
    ModelSpec,
    build_base_model,
    build_model,
    build_tokenizer,
    tokenize,
)
from fedsim.models.checkpoint import CheckpointError, match_state_dict
from fedsim.models.text import load_tokenizer

VIT_KWARGS = {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
SWIN_KWARGS = {"window_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "drop_path_rate": 0.0}


def timm_spec(name: str, kwargs: dict, checkpoint: str | None, num_classes: int = 4) -> ModelSpec:
    return ModelSpec(
        family="timm", name=name, num_classes=num_classes, pretrained=checkpoint is not None, checkpoint=checkpoint,
        img_size=32, model_kwargs=kwargs, lora_rank=2, init_seed=3,
    )


def saved_timm(tmp_path, name: str, kwargs: dict, num_classes: int, suffix: str = ".pth", wrap: bool = False):
    """A randomly initialised timm model (seed 11, not the spec's 3) saved the way timm files are."""
    torch.manual_seed(11)
    source = timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=32, **kwargs)
    state = {k: v.clone().contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state} if wrap else state, path)
    return path, state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_weights_load_and_a_head_of_another_width_is_reinitialised(tmp_path, suffix, caplog):
    path, saved = saved_timm(tmp_path, "vit_tiny_patch16_224", VIT_KWARGS, num_classes=7, suffix=suffix)
    with caplog.at_level(logging.INFO, logger="fedsim.models.checkpoint"):
        base = build_base_model(timm_spec("vit_tiny_patch16_224", VIT_KWARGS, str(path)))
    fresh = build_base_model(timm_spec("vit_tiny_patch16_224", VIT_KWARGS, None))
    state = base.state_dict()
    backbone = [k for k in state if not k.startswith("head.")]
    assert backbone and all(torch.equal(state[k], saved[k]) for k in backbone)
    assert not torch.equal(state["blocks.0.attn.qkv.weight"], fresh.state_dict()["blocks.0.attn.qkv.weight"])
    # The 4-class head keeps its seeded init (the file's has 7 classes): the same in every process.
    assert torch.equal(state["head.weight"], fresh.state_dict()["head.weight"])
    text = caplog.text
    assert re.search(r"classifier head re-initialised: 2 \(head\.(weight|bias), head\.(weight|bias)\)", text)
    assert "expected when the checkpoint's number of classes differs" in text


def original_swin_layout(state: dict) -> dict:
    """timm's Swin names as Microsoft's release has them: a stage's downsample at its end
    (timm: at the next stage's start), the head as ``head.``, the non-persistent buffers saved."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        out[key.replace("head.fc.", "head.")] = value
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
    return out


def test_an_original_swin_release_loads_through_timms_filter(tmp_path):
    name = "swin_tiny_patch4_window7_224"
    path, saved = saved_timm(tmp_path, name, SWIN_KWARGS, num_classes=4)
    assert "layers.1.downsample.reduction.weight" in saved
    torch.save({"model": original_swin_layout(saved)}, path)
    model = build_model(timm_spec(name, SWIN_KWARGS, str(path)))  # then LoRA on top
    base = model.get_base_model()
    assert torch.equal(base.layers[0].blocks[0].attn.qkv.base_layer.weight, saved["layers.0.blocks.0.attn.qkv.weight"])
    assert torch.equal(base.layers[1].downsample.reduction.weight, saved["layers.1.downsample.reduction.weight"])
    assert torch.equal(base.head.fc.original_module.weight, saved["head.fc.weight"])  # same width: loaded


def test_a_missing_or_reshaped_backbone_tensor_is_refused_with_the_keys_named(tmp_path):
    path, saved = saved_timm(tmp_path, "vit_tiny_patch16_224", VIT_KWARGS, num_classes=4)
    del saved["blocks.1.mlp.fc2.weight"]
    saved["extra.buffer"] = torch.zeros(3)
    torch.save(saved, path)
    with pytest.raises(CheckpointError, match=r"missing from the file: 1 \(blocks\.1\.mlp\.fc2\.weight\)") as err:
        build_base_model(timm_spec("vit_tiny_patch16_224", VIT_KWARGS, str(path)))
    assert "unexpected (skipped): 1 (extra.buffer)" in str(err.value) and str(path) in str(err.value)
    wider, _ = saved_timm(tmp_path, "vit_tiny_patch16_224", {**VIT_KWARGS, "embed_dim": 48}, num_classes=4)
    with pytest.raises(CheckpointError, match=r"shape differs: \d+ \(.*file \(48,\) model \(32,\)"):
        build_base_model(timm_spec("vit_tiny_patch16_224", VIT_KWARGS, str(wider)))
    with pytest.raises(CheckpointError, match="expected an existing timm weights file"):
        build_base_model(timm_spec("vit_tiny_patch16_224", VIT_KWARGS, str(tmp_path / "absent.pth")))


def test_matching_is_by_name_and_shape_and_nothing_matching_is_an_error():
    model = {"a": torch.zeros(2), "head.w": torch.zeros(3)}
    to_load, report = match_state_dict(model, {"a": torch.ones(2), "head.w": torch.ones(5), "b": torch.ones(1)}, ["head"], "f")
    assert set(to_load) == {"a"} and report.head_reset == ("head.w",) and report.unexpected == ("b",) and report.ok
    _, report = match_state_dict(model, {"x": torch.ones(2)}, ["head"], "f")
    assert not report.ok and "no key matches this model" in report.message()


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    """A tiny BERT (random init) with the bundled MiniLM's tokenizer, saved as a transformers directory."""
    directory = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    torch.manual_seed(5)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_a_transformers_directory_gives_the_text_backbone_and_tokenizer(text_checkpoint):
    spec = ModelSpec(family="text", name="tiny-bert", num_classes=3, pretrained=True, checkpoint=str(text_checkpoint), max_length=12)
    model = build_model(spec)
    saved = BertModel.from_pretrained(text_checkpoint).state_dict()
    loaded = model.get_base_model().backbone.state_dict()
    weight = "encoder.layer.0.attention.self.query.base_layer.weight"
    assert torch.equal(loaded[weight], saved["encoder.layer.0.attention.self.query.weight"])
    ids, mask = tokenize(build_tokenizer(spec), ["a checkpoint from disk"], spec.max_length)
    assert torch.isfinite(model(ids, mask)).all()


def test_a_text_directory_missing_encoder_weights_is_refused(text_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in text_checkpoint.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    spec = ModelSpec(family="text", name="tiny-bert", num_classes=3, pretrained=True, checkpoint=str(broken))
    with pytest.raises(CheckpointError, match=r"missing from the file: 16 \(encoder\.layer\.1\."):
        build_base_model(spec)
    with pytest.raises(CheckpointError, match="with config.json"):
        build_base_model(dataclasses.replace(spec, checkpoint=str(tmp_path)))


def test_a_checkpoint_needs_pretrained_weights():
    with pytest.raises(ValueError, match="ModelSpec.checkpoint"):
        timm_spec("vit_tiny_patch16_224", VIT_KWARGS, None).__class__(family="timm", name="vit_tiny_patch16_224", num_classes=2, checkpoint="w.pth")
    with pytest.raises(ConfigError, match="checkpoint='w.pth' is invalid: expected unset when pretrained = false"):
        build_config(checkpoint="w.pth", pretrained=False)
    with pytest.raises(ConfigError, match="checkpoint=''"):
        build_config({"checkpoint": ""})
