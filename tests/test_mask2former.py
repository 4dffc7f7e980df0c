"""Mask2Former wrapper: building from conf/model, pretrained folders and hub ids offline, the paper's input,
backbone-only features and instance ranking. The tiny config is built from config alone: nothing downloads."""
from __future__ import annotations

import math
import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import ListConfig, OmegaConf

from partdistill.config import CONFIG_DIR
from partdistill.errors import UserError
from partdistill.models.inputs import PIXEL_MEAN, PIXEL_STD, Batch, preprocess
from partdistill.models.mask2former import ModelConfigError, PretrainedUnavailable, _checked, build_model
from partdistill.models.outputs import backbone_features, top_instances

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_cfg():
    cfg = OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml")
    cfg.pop("defaults", None)  # a schema line in the defaults list is Hydra's, not a model option
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg()).eval()


def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (50, 80, 3), dtype=np.uint8), rng.integers(0, 256, (96, 64, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def forward(model):
    batch = preprocess(images(), size=128)
    with torch.no_grad():
        outputs = model(pixel_values=batch.pixel_values, pixel_mask=batch.pixel_mask, output_hidden_states=True)
    return batch, outputs


# ---------------------------------------------------------------------------------------------
# build_model


def test_tiny_model_builds_from_the_config_file(model):
    cfg = tiny_cfg()
    assert isinstance(cfg.backbone.depths, ListConfig)  # what transformers' config classes reject
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    config = model.config
    assert (config.hidden_dim, config.num_queries, config.decoder_layers, config.num_labels) == (64, 10, 2, 80)
    assert config.backbone_config.embed_dim == 32 and list(config.backbone_config.depths) == [1, 1, 1, 1]
    assert build_model(OmegaConf.to_container(cfg), num_labels=7).class_predictor.out_features == 8


def test_composed_model_group_builds(compose_cfg):
    model = build_model(compose_cfg("model=tiny").model)
    assert model.config.num_queries == 10


def test_misspelt_keys_fail_with_the_option_name():
    cfg = tiny_cfg()
    cfg.backbone.embed_dm = 16
    with pytest.raises(ModelConfigError, match=r"model\.backbone\.embed_dm .*did you mean model\.backbone\.embed_dim"):
        build_model(cfg)
    with pytest.raises(ModelConfigError, match=r"model\.num_querys"):
        build_model({**OmegaConf.to_container(tiny_cfg()), "num_querys": 5})
    bad = tiny_cfg()
    bad.backbone.depths = [1, 1, 1]
    with pytest.raises(ModelConfigError, match=r"model\.backbone\.depths"):
        build_model(bad)
    bad.backbone.type = "vit"
    with pytest.raises(ModelConfigError, match=r"model\.backbone\.type='vit'"):
        build_model(bad)
    with pytest.raises(ModelConfigError, match="hidden_dim"):
        build_model({**OmegaConf.to_container(tiny_cfg()), "hidden_dim": "wide"})


def test_transformers_kwargs_are_checked_against_the_config_fields():
    from transformers import SwinConfig

    assert _checked(SwinConfig, embed_dim=8, out_features=["stage1"]).embed_dim == 8
    with pytest.raises(TypeError, match="embed_dm"):
        _checked(SwinConfig, embed_dm=8)


@pytest.mark.parametrize("where", ["absolute", "./relative", "~/partdistill-no-such-folder", "file"])
def test_missing_pretrained_folder_is_a_user_error(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("not a model")
    source = {"absolute": str(tmp_path / "nope")}.get(where, where)
    cfg = tiny_cfg()
    cfg.pretrained = source
    with pytest.raises(PretrainedUnavailable, match=r"model\.pretrained") as info:
        build_model(cfg)
    assert isinstance(info.value, UserError) and source in str(info.value) and "save_pretrained" in str(info.value)


def test_offline_hub_id_not_cached_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tiny_cfg()
    cfg.pretrained = "partdistill-tests/no-such-model"
    start = time.perf_counter()
    message = r"model\.pretrained.*no-such-model.*not in the local .*cache"
    with pytest.raises(PretrainedUnavailable, match=message) as info:
        build_model(cfg)
    assert time.perf_counter() - start < 5
    assert "hf download partdistill-tests/no-such-model" in str(info.value) and "local folder" in str(info.value)


def test_saved_model_reloads_identically_and_quietly(model, tmp_path, capfd):
    model.save_pretrained(tmp_path / "m2f")
    cfg = tiny_cfg()
    cfg.pretrained = str(tmp_path / "m2f")
    capfd.readouterr()
    loaded = build_model(cfg).eval()
    assert "Loading weights" not in capfd.readouterr().err  # no progress bar
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model(pixel_values=x), loaded(pixel_values=x)
    assert torch.equal(a.class_queries_logits, b.class_queries_logits)
    assert torch.equal(a.masks_queries_logits, b.masks_queries_logits)

    relabelled = build_model(cfg, num_labels=5)  # a new head; everything else is the saved model's
    assert relabelled.class_predictor.out_features == 6 and relabelled.config.num_labels == 5
    new_head = ("class_predictor.", "criterion.")
    saved = {k: v for k, v in model.state_dict().items() if not k.startswith(new_head)}
    kept = {k: v for k, v in relabelled.state_dict().items() if not k.startswith(new_head)}
    assert saved.keys() == kept.keys() and all(torch.equal(saved[k], kept[k]) for k in saved)
    (tmp_path / "empty").mkdir()
    cfg.pretrained = str(tmp_path / "empty")
    with pytest.raises(PretrainedUnavailable, match=r"model\.pretrained.*config\.json"):
        build_model(cfg)


def test_resnet_backbone_has_the_same_strides():
    cfg = tiny_cfg()
    cfg.backbone.type, cfg.backbone.embed_dim = "resnet", 8
    model = build_model(cfg).eval()
    with torch.no_grad():
        features = backbone_features(model, torch.zeros(1, 3, 64, 96), keys=("res2", "res3", "res4", "res5"))
    assert [tuple(f.shape) for f in features.values()] == [(1, 32, 16, 24), (1, 64, 8, 12), (1, 128, 4, 6),
                                                           (1, 256, 2, 3)]


# ---------------------------------------------------------------------------------------------
# preprocess


def test_preprocess_fits_pads_and_normalises():
    image = np.empty((300, 500, 3), dtype=np.uint8)
    image[:] = (100, 150, 200)
    batch = preprocess([image], size=640)
    assert batch.image_sizes == [(384, 640)] and batch.original_sizes == [(300, 500)]
    assert batch.pixel_values.shape == (1, 3, 384, 640) and batch.pixel_values.dtype == torch.float32
    expected = [(v - m) / s for v, m, s in zip((100, 150, 200), PIXEL_MEAN, PIXEL_STD)]
    assert torch.allclose(batch.pixel_values[0].mean((1, 2)), torch.tensor(expected), atol=1e-5)
    assert batch.pixel_values[0].amax((1, 2)).sub(batch.pixel_values[0].amin((1, 2))).abs().max() < 1e-5

    small = preprocess([image], size=128)  # 300 x 500 -> 77 x 128, padded to 96 x 128
    assert small.image_sizes == [(77, 128)] and small.pixel_values.shape[-2:] == (96, 128)
    assert small.pixel_mask.dtype == torch.int64 and small.pixel_mask.sum() == 77 * 128
    assert small.pixel_mask[0, :77].all() and not small.pixel_mask[0, 77:].any()
    assert torch.count_nonzero(small.pixel_values[0, :, 77:]) == 0
    with pytest.raises(ValueError, match="uint8"):
        preprocess([image.astype(np.float32)])


def test_preprocess_batches_different_sizes():
    a, b = images()
    batch = preprocess([a, b, a, np.zeros((1000, 500, 3), np.uint8)], size=128)
    assert batch.image_sizes == [(80, 128), (128, 85), (80, 128), (128, 64)]
    assert batch.pixel_values.shape == (4, 3, 128, 128) and batch.pixel_mask.shape == (4, 128, 128)
    for (h, w), (oh, ow) in zip(batch.image_sizes, batch.original_sizes):
        assert abs(h / w - oh / ow) < 1.5 / min(h, w)  # aspect kept up to rounding
        assert max(h, w) == 128
    assert torch.equal(batch.pixel_values[0], batch.pixel_values[2])
    assert torch.equal(preprocess([b], size=128).pixel_values[0, :, :, :85], batch.pixel_values[1, :, :, :85])
    assert all(s % 32 == 0 for s in preprocess([a], size=100).pixel_values.shape[-2:])


# ---------------------------------------------------------------------------------------------
# backbone_features and top_instances


def test_backbone_features_are_the_encoder_states_without_the_decoders(model, forward, monkeypatch):
    batch, outputs = forward
    level = model.model.pixel_level_module

    def refuse(*args, **kwargs):
        raise AssertionError("backbone_features ran a decoder")

    monkeypatch.setattr(level.decoder, "forward", refuse)
    monkeypatch.setattr(model.model.transformer_module, "forward", refuse)
    with torch.no_grad():
        features = backbone_features(model, batch.pixel_values)
    assert list(features) == ["res3", "res4"]
    assert features["res3"].shape == (2, 64, 128 // 8, 128 // 8)
    assert features["res4"].shape == (2, 128, 128 // 16, 128 // 16)
    assert torch.allclose(features["res3"], outputs.encoder_hidden_states[1], atol=1e-5)
    assert torch.allclose(features["res4"], outputs.encoder_hidden_states[2], atol=1e-5)
    with pytest.raises(ValueError, match="res6.*res2, res3, res4, res5"):
        backbone_features(model, batch.pixel_values, keys=("res6",))


def test_top_instances_of_the_tiny_model(forward):
    batch, outputs = forward
    top = top_instances(outputs, batch, k=3)
    assert len(top) == 2
    for instances, (height, width) in zip(top, batch.original_sizes):
        assert len(instances) == 3
        scores = [i["score"] for i in instances]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        for instance in instances:
            assert instance["mask"].shape == (height, width) and instance["mask"].dtype == bool
            assert 0 <= instance["label"] < 80
    assert [len(i) for i in top_instances(outputs, batch, k=50)] == [10, 10]  # at most one per query
    with pytest.raises(ValueError, match="k must be"):
        top_instances(outputs, batch, k=0)


def test_top_instance_scores_follow_the_formula():
    """Queries with constant mask logits: class score x sigmoid(logit); padding never counts."""
    class_logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 5.0], [4.0, 0.0, 0.0]]])
    masks = torch.empty(1, 4, 8, 8)  # stride 4 of the 32 x 32 padded input
    masks[0, 0], masks[0, 1], masks[0, 2] = 2.0, 0.5, -1.0
    masks[0, 3, :4], masks[0, 3, 4:] = -3.0, 3.0  # positive only in the padding (rows 16..31)
    outputs = SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=masks)
    batch = Batch(torch.zeros(1, 3, 32, 32), torch.ones(1, 32, 32, dtype=torch.int64), [(16, 32)], [(20, 40)])

    def expected(query):
        probs = [math.exp(v) for v in class_logits[0, query].tolist()]
        best = max(range(2), key=lambda c: probs[c])
        return probs[best] / sum(probs), best

    instances = top_instances(outputs, batch, k=4)[0]
    (c0, l0), (c1, l1) = expected(0), expected(1)
    want = sorted([(c0 * torch.sigmoid(torch.tensor(2.0)).item(), l0, True),
                   (c1 * torch.sigmoid(torch.tensor(0.5)).item(), l1, True)], reverse=True)
    for got, (score, label, full) in zip(instances, want):
        assert got["score"] == pytest.approx(score, rel=1e-5) and got["label"] == label
        assert got["mask"].shape == (20, 40) and got["mask"].all() == full
    assert [i["score"] for i in instances[2:]] == [0.0, 0.0]  # no positive pixel on the image
    assert not instances[2]["mask"].any() and not instances[3]["mask"].any()


def test_model_weights_load_a_partdistill_checkpoint(tmp_path):
    from partdistill.models.weights import save_model_weights
    from partdistill.errors import UserError

    cfg = OmegaConf.load(CONFIG_DIR / "model/tiny.yaml")
    trained = build_model(cfg, num_labels=1)
    save_model_weights(tmp_path / "model-0000004.safetensors", trained)
    cfg.weights = str(tmp_path / "model-0000004.safetensors")
    loaded = build_model(cfg, num_labels=1)
    for (name, a), (_, b) in zip(trained.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    cfg.weights = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match="model.weights=.*nowhere: no such file or folder"):
        build_model(cfg, num_labels=1)
