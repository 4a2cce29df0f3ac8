"""Pretrained Swin encoder weights (``model.pretrained``) in MONAI's own layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SMALL, cohort_config
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import SwinTransformer
from test_models import GRID, TINY

from gazimed_lab.config import ConfigError, load_config
from gazimed_lab.models import MultimodalAlzheimersNet
from gazimed_lab.models.pretrained import load_pretrained, read_swin_weights


def _swin_settings() -> dict:
    return dict(depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=(4, 4, 4))


def _unetr(in_channels: int = 1) -> SwinUNETR:
    torch.manual_seed(3)
    return SwinUNETR(in_channels=in_channels, out_channels=2, feature_size=12, patch_size=1,
                     spatial_dims=3, **_swin_settings())


def _net(channels: int = 2, **extra: object) -> MultimodalAlzheimersNet:
    torch.manual_seed(0)
    return MultimodalAlzheimersNet(in_channels=channels, **{**TINY, "embed_dim": 12, **extra})


def test_a_swinunetr_state_dict_fills_both_encoders(tmp_path: Path):
    unetr = _unetr()
    path = tmp_path / "unetr.pt"
    torch.save(unetr.state_dict(), path)
    net = _net()
    report = load_pretrained(net, path, "both")
    assert report.layout == "SwinUNETR state dict"
    assert any(k.startswith("decoder") for k in report.ignored)  # the decoder is not ours
    source = unetr.swinViT.state_dict()
    for name in ("mri", "pet"):
        load = report.encoders[name]
        assert load.loaded and not load.missing and not load.mismatched
        encoder = net.mri_encoder if name == "mri" else net.pet_encoder
        assert encoder is not None
        for key, value in encoder.swin.state_dict().items():
            assert torch.equal(value, source[key]), key
    # TINY fuses stages 3 and 4: all five outputs are built, nothing is unexpected
    assert report.encoders["mri"].unexpected == []
    summary = report.summary()
    assert "mri encoder:" in summary and "0 missing" in summary


def test_the_self_supervised_swinvit_layout_and_unbuilt_stages(tmp_path: Path):
    torch.manual_seed(5)
    swin = SwinTransformer(in_chans=1, embed_dim=12, patch_size=(1, 1, 1), spatial_dims=3,
                           **_swin_settings())
    state = {f"module.{k}": v for k, v in swin.state_dict().items()}
    state["module.rotation_head.weight"] = torch.zeros(4, 48)  # a pretraining head
    path = tmp_path / "model_swinvit.pt"
    torch.save({"epoch": 100, "state_dict": state}, path)
    weights, layout, ignored = read_swin_weights(path)
    assert layout == "SwinViT self-supervised checkpoint"
    assert ignored == ["module.rotation_head.weight"]
    net = _net(fusion_stages=(2, 3))  # stage 4 is not built
    report = load_pretrained(net, path, "mri")
    assert list(report.encoders) == ["mri"]
    assert any(k.startswith("layers4.") for k in report.encoders["mri"].unexpected)
    assert net.mri_encoder is not None
    assert torch.equal(net.mri_encoder.swin.patch_embed.proj.weight,
                       weights["patch_embed.proj.weight"])
    assert net.pet_encoder is not None  # not chosen: left as it was
    assert not torch.equal(net.pet_encoder.swin.patch_embed.proj.weight,
                           weights["patch_embed.proj.weight"])


def test_shape_mismatches_are_named_not_skipped_silently(tmp_path: Path):
    path = tmp_path / "unetr.pt"
    torch.save(_unetr(in_channels=1).state_dict(), path)
    net = _net(channels=3)  # the PET encoder reads PET and PET - MRI: 2 channels
    report = load_pretrained(net, path, "pet")
    load = report.encoders["pet"]
    assert load.mismatched == ["patch_embed.proj.weight: file (12, 1, 1, 1, 1) vs encoder "
                               "(12, 2, 1, 1, 1)"]
    assert "patch_embed.proj.bias" in load.loaded and len(load.loaded) > 10
    assert "1 shape mismatches (patch_embed.proj.weight" in report.summary()


def test_files_that_cannot_be_used_are_refused_with_the_reason(tmp_path: Path):
    net = _net()
    with pytest.raises(FileNotFoundError, match=r"`model.pretrained` must be a weights file, "
                                                r"got a missing path"):
        load_pretrained(net, tmp_path / "none.pt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"must hold Swin transformer weights .* got none of "
                                         r"them .*fc.weight"):
        load_pretrained(net, tmp_path / "other.pt")
    big = SwinTransformer(in_chans=1, embed_dim=24, patch_size=(1, 1, 1), spatial_dims=3,
                          **_swin_settings())
    torch.save(big.state_dict(), tmp_path / "wider.pt")
    before = net.mri_encoder.swin.patch_embed.proj.bias.detach().clone()  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"must fit the mri encoder, got \d+ of its \d+ "
                                         r"tensors of matching name and shape"):
        load_pretrained(net, tmp_path / "wider.pt")
    assert torch.equal(net.mri_encoder.swin.patch_embed.proj.bias, before)  # type: ignore[union-attr]

    import argparse  # any class outside torch's allowlist: loading it would run pickled code

    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": argparse.Namespace(a=1)},
               tmp_path / "code.pt")
    with pytest.raises(ValueError, match=r"no pickled code runs"):
        load_pretrained(net, tmp_path / "code.pt")
    regions = MultimodalAlzheimersNet(in_channels=2, **{
        **TINY, "image_pathway": "regions",
        "region_masks": torch.ones(1, *GRID, dtype=torch.bool).numpy()})
    torch.save(_unetr().state_dict(), tmp_path / "unetr.pt")
    with pytest.raises(ValueError, match=r"must be used with a Swin image pathway"):
        load_pretrained(regions, tmp_path / "unetr.pt")
    with pytest.raises(ConfigError, match=r"`model.pretrained_encoders` must be one of both, "
                                          r"mri, pet"):
        load_config("cpu-demo", overrides=["model.pretrained_encoders=decoder"])
    with pytest.raises(ConfigError, match=r"`model.freeze_encoders_epochs` must be 0 without "
                                          r"model.pretrained"):
        load_config("cpu-demo", overrides=["model.freeze_encoders_epochs=2"])


@pytest.mark.slow
def test_fit_starts_from_the_file_and_unfreezes_after_the_set_epochs(tiny_cohort: Path,
                                                                      tmp_path: Path):
    from monai.networks.nets import SwinUNETR

    from gazimed_lab.runner import train_and_evaluate

    cfg = load_config("cpu-demo")  # its Swin settings, the pathway switched to Swin
    unetr = SwinUNETR(in_channels=1, out_channels=2, spatial_dims=3, feature_size=12,
                      patch_size=int(cfg.model.patch_size[0]), depths=(1, 1, 1, 1),
                      num_heads=tuple(cfg.model.num_heads), window_size=(4, 4, 4))
    path = tmp_path / "unetr.pt"
    torch.save({"state_dict": unetr.state_dict()}, path)
    weight = unetr.swinViT.patch_embed.proj.weight.detach().clone()
    run_cfg = cohort_config(tiny_cohort, tmp_path, *SMALL, "trainer.max_epochs=2",
                            "model.image_pathway=swin", f"model.pretrained={path}",
                            "model.pretrained_encoders=mri", "model.freeze_encoders_epochs=1",
                            "trainer.save_top_k=-1", "trainer.early_stopping=false")
    result = train_and_evaluate(run_cfg)
    report = json.loads((result.run_dir / "pretrained.json").read_text())
    assert report["layout"] == "SwinUNETR state dict" and not report["encoders"]["mri"]["missing"]
    epochs = sorted((result.run_dir / "checkpoints").glob("epoch=*.ckpt"))
    assert len(epochs) == 2
    key = "model.mri_encoder.swin.patch_embed.proj.weight"
    first, second = (torch.load(p, weights_only=True)["state_dict"][key] for p in epochs)
    assert torch.equal(first, weight)  # frozen during epoch 0
    assert not torch.equal(second, weight)  # trained from epoch 1
