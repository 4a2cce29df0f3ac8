"""Networks, losses, metrics and optimizer (CPU, tiny networks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import f1_score, r2_score, recall_score, roc_auc_score

from gazimed_lab.config import ConfigError, load_config
from gazimed_lab.data.clinical import ClinicalStats
from gazimed_lab.data.grid import get_grid
from gazimed_lab.data.spec import InputSpec
from gazimed_lab.models import (
    AlzheimersLightningModule,
    MultimodalAlzheimersNet,
    ScoreLoss,
    ScoreMetrics,
    WarmupCosine,
    padded_grid,
    param_groups,
)

GRID = (12, 16, 12)
N_CLIN = 5
TINY = dict(
    img_size=GRID, patch_size=(1, 1, 1), embed_dim=6, depths=(1, 1, 1, 1),
    num_heads=(1, 1, 2, 2), window_size=(4, 4, 4), fusion_stages=(3, 4), fusion_dim=16,
    fusion_heads=2, clinical_features_dim=N_CLIN, clinical_hidden=(16,), clinical_out_dim=8,
    head_hidden=(16,), dropout=0.0, drop_path_rate=0.0, modality_dropout=0.0,
)
TINY_OVERRIDES = [
    "model.patch_size=[1,1,1]", "model.embed_dim=6",
    "model.depths=[1,1,1,1]", "model.num_heads=[1,1,2,2]", "model.window_size=[4,4,4]",
    "model.fusion_dim=16", "model.fusion_heads=2",
    "model.clinical_hidden=[16]", "model.clinical_out_dim=8", "model.head_hidden=[16]",
    "model.drop_path_rate=0.0", "data.batch_size=4", "trainer.accumulate_grad_batches=1",
    "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
    "trainer.accelerator=cpu", "trainer.devices=1", "optim.warmup_epochs=1",
    # the Swin pathway with cross-attention (cpu-demo itself reads atlas regions)
    "model.image_pathway=swin", "model.deep_supervision=false",
]


TINY_GRID = get_grid("tiny", list(GRID), np.diag([4.0, 4.0, 4.0, 1.0]))


def tiny_spec(channels: int = 2, n_clin: int = N_CLIN, fitted: bool = False) -> InputSpec:
    """The input spec of the tiny tensors: unfitted (sizes only) or with trivial statistics."""
    names = [f"f{i}" for i in range(n_clin)]
    if not fitted:
        return InputSpec.unfitted(TINY_GRID, channels, feature_names=names)
    stats = ClinicalStats(names, [0.0] * n_clin, [0.0] * n_clin, [1.0] * n_clin)
    return InputSpec.fit(TINY_GRID, channels, "whole_brain", stats)


def tiny_batch(b: int = 4, channels: int = 2, seed: int = 0, pet_missing=(1,)) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 2)
    for i in pet_missing:
        mask[i, 1] = 0
    images = torch.randn(b, channels, *GRID, generator=g)
    return {
        "images": images,
        "modality_mask": mask,
        "clinical_features": torch.randn(b, N_CLIN, generator=g),
        "clinical_mask": torch.ones(b, N_CLIN),
        "targets": torch.linspace(0.1, 0.9, b),
        "subject_id": [f"sub-{seed:02d}{i:02d}" for i in range(b)],
    }


def net_inputs(batch: dict) -> tuple:
    return (batch["images"], batch["modality_mask"], batch["clinical_features"],
            batch["clinical_mask"])


def test_padded_grid_reference_and_demo():
    assert padded_grid((91, 109, 91), (4, 4, 4)) == ((92, 112, 92), ((0, 1), (1, 2), (0, 1)))
    assert padded_grid((40, 48, 40), (2, 2, 2)) == ((40, 48, 40), ((0, 0),) * 3)
    assert padded_grid((45, 54, 45), (2, 2, 2)) == ((46, 54, 46), ((0, 1), (0, 0), (0, 1)))


def test_stage_grids_match_what_monai_produces():
    net = MultimodalAlzheimersNet(in_channels=2, **{**TINY, "img_size": (13, 16, 11)}).eval()
    enc = net.mri_encoder
    outs = enc(torch.randn(1, 1, 13, 16, 11))
    assert [tuple(o.shape[2:]) for o in outs] == [tuple(g) for g in enc.stage_grids]


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("shared", [False, True])
def test_forward_shapes_and_range(channels, shared):
    torch.manual_seed(0)
    net = MultimodalAlzheimersNet(in_channels=channels, shared_encoder=shared, **TINY).eval()
    out = net(*net_inputs(tiny_batch(channels=channels)))
    assert out.shape == (4,)
    assert torch.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    info = net.get_model_info()
    assert info["padded_size"] == [12, 16, 12] and info["padding"] == [[0, 0], [0, 0], [0, 0]]
    assert net.padded_size == (12, 16, 12) and net.padding == ((0, 0), (0, 0), (0, 0))
    assert info["parameters"]["total"] == sum(p.numel() for p in net.parameters())
    own_pet_weights = channels > 1 and not (shared and channels == 2)
    assert (info["parameters"]["pet_encoder"] > 0) == own_pet_weights


@pytest.mark.parametrize("mode", ["image_only", "clinical_only"])
def test_modes(mode):
    net = MultimodalAlzheimersNet(mode=mode, **TINY).eval()
    batch = tiny_batch()
    if mode == "clinical_only":
        out = net(clinical_features=batch["clinical_features"],
                  clinical_mask=batch["clinical_mask"])
        assert net.mri_encoder is None
    else:
        out = net(batch["images"], batch["modality_mask"])
        assert net.clinical_encoder is None
    assert out.shape == (4,) and torch.isfinite(out).all()


@pytest.mark.parametrize("shared", [False, True])
def test_missing_pet_ignores_pet_content(shared):
    torch.manual_seed(0)
    net = MultimodalAlzheimersNet(in_channels=3, shared_encoder=shared, **TINY).eval()
    a = tiny_batch(channels=3, pet_missing=(1,))
    b = {**a, "images": a["images"].clone()}
    b["images"][:, 1:] = torch.randn_like(b["images"][:, 1:]) * 5 + 3
    b["images"][1, 1:] = float("nan")  # the missing subject's PET is never read
    with torch.no_grad():
        out_a, out_b = net(*net_inputs(a)), net(*net_inputs(b))
    assert torch.isfinite(out_b).all()
    assert out_a[1] == out_b[1]
    assert not torch.allclose(out_a[[0, 2, 3]], out_b[[0, 2, 3]])  # present PET is used


def test_modality_dropout_hides_pet_in_training_only():
    torch.manual_seed(0)
    net = MultimodalAlzheimersNet(in_channels=2, **{**TINY, "modality_dropout": 1.0})
    batch = tiny_batch(pet_missing=())
    no_pet = {**batch, "modality_mask": torch.tensor([[1.0, 0.0]] * 4)}
    net.train()  # batch statistics in BatchNorm: compare train-mode outputs with each other
    with torch.no_grad():
        dropped = net(*net_inputs(batch))
        assert torch.allclose(dropped, net(*net_inputs(no_pet)), atol=1e-6)
    net.eval()
    with torch.no_grad():
        assert not torch.allclose(net(*net_inputs(no_pet)), net(*net_inputs(batch)))


@pytest.mark.parametrize("shared", [False, True])
def test_each_modality_encoded_once_per_forward(shared):
    net = MultimodalAlzheimersNet(in_channels=2, shared_encoder=shared, **TINY).eval()
    calls = {"mri": 0, "pet": 0}

    def count(name):
        def hook(*_):
            calls[name] += 1
        return hook

    # Every Swin run starts with its patch embedding.
    net.mri_encoder.swin.patch_embed.register_forward_hook(count("mri"))
    if net.pet_encoder is not None:
        net.pet_encoder.swin.patch_embed.register_forward_hook(count("pet"))
    with torch.no_grad():
        net(*net_inputs(tiny_batch()))
    assert calls == ({"mri": 2, "pet": 0} if shared else {"mri": 1, "pet": 1})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"num_heads": (4, 1, 2, 2)}, r"`embed_dim` must be divisible by `num_heads\[0\]`"),
        ({"depths": (1, 1, 1)}, "`depths` must be 4 positive integers"),
        ({"fusion_stages": (5,)}, "`fusion_stages` must be distinct indices in 0..4"),
        ({"fusion_dim": 15}, "`fusion_dim` must be divisible by `fusion_heads`"),
        ({"mode": "pet_only"}, "`mode` must be one of"),
        ({"img_size": None}, "`img_size` must be 3 positive integers"),
        ({"patch_size": (2, 2)}, "`patch_size` must be 3 positive integers"),
        ({"in_channels": 4}, "`in_channels` must be 1, 2 or 3"),
    ],
)
def test_arguments_are_validated(change, match):
    with pytest.raises(ValueError, match=match):
        MultimodalAlzheimersNet(**{**TINY, **change})


def test_input_shapes_are_checked_with_a_fix():
    net = MultimodalAlzheimersNet(**TINY).eval()
    batch = tiny_batch()
    with pytest.raises(ValueError, match=r"`images` must have shape \(B, 2, 12, 16, 12\)"):
        net(batch["images"][:, :1], batch["modality_mask"], batch["clinical_features"])
    with pytest.raises(ValueError, match=r"built for 5 clinical features \(InputSpec"):
        net(batch["images"], batch["modality_mask"], torch.randn(4, 7))


def test_missing_clinical_values_are_masked_not_read():
    net = MultimodalAlzheimersNet(**TINY).eval()
    batch = tiny_batch()
    batch["clinical_mask"][:, 2] = 0
    other = {**batch, "clinical_features": batch["clinical_features"].clone()}
    other["clinical_features"][:, 2] = float("nan")
    with torch.no_grad():
        assert torch.equal(net(*net_inputs(batch)), net(*net_inputs(other)))


def test_keyword_form_of_design_constructs_reference_network():
    model = AlzheimersLightningModule(
        img_size=(91, 120, 91), patch_size=(4, 4, 4), in_channels=2,
        clinical_features_dim=118, learning_rate=1e-4, weight_decay=1e-2,
        use_mixed_precision=True, gradient_clip_val=1.0, accumulate_grad_batches=8)
    cfg = model.cfg
    assert model.spec.img_size == (91, 120, 91) and model.spec.n_features == 118
    assert model.spec.channels == cfg.data.channels == 2 and not model.spec.fitted
    assert list(cfg.data.grid_shape) == [91, 120, 91]  # 2 mm voxels, the default grid's origin
    assert np.allclose(cfg.data.grid_affine, get_grid("mni152_2mm").affine)
    assert cfg.optim.learning_rate == 1e-4 and cfg.optim.weight_decay == 1e-2
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.accumulate_grad_batches == 8
    assert cfg.trainer.precision is None  # mixed precision where the hardware has it
    info = model.get_model_info()
    assert info["padded_size"] == [92, 120, 92]
    assert info["parameters"]["mri_encoder"] == info["parameters"]["pet_encoder"] > 1_000_000
    assert model.hparams["spec"]["grid"]["shape"] == [91, 120, 91]
    assert model.model is model.net and isinstance(model.model, MultimodalAlzheimersNet)


def test_keyword_form_runs_forward_at_small_size():
    kw = {k: v for k, v in TINY.items()}
    model = AlzheimersLightningModule(
        in_channels=2, learning_rate=1e-4, weight_decay=1e-2, use_mixed_precision=False,
        gradient_clip_val=1.0, accumulate_grad_batches=8, **kw).eval()
    assert model.cfg.trainer.precision == "32-true"
    out = model(tiny_batch())
    assert out.shape == (4,) and torch.isfinite(out).all()


def test_keyword_errors_name_the_key():
    with pytest.raises(ValueError, match="did you mean `learning_rate`"):
        AlzheimersLightningModule(learning_rat=1e-3)
    with pytest.raises(ConfigError, match=r"`model\.in_channels` must not be set.*data\.channels"):
        AlzheimersLightningModule({"model": {"in_channels": 3}})
    with pytest.raises(ConfigError, match=r"`model\.img_size` must not be set.*`data\.grid`"):
        load_config("default", overrides=["model.img_size=[91,109,91]"])
    with pytest.raises(ValueError, match=r"`clinical_features_dim` must equal the spec's"):
        AlzheimersLightningModule(load_config("cpu-demo"), spec=tiny_spec(),
                                  clinical_features_dim=7)


# ---------------------------------------------------------------- losses
LOGITS = torch.tensor([-2.0, -0.5, 0.3, 1.7, 3.0])
TARGETS = torch.tensor([0.1, 0.2, 0.6, 0.9, 0.8])


@pytest.mark.parametrize("kind", ["mse", "mae", "huber", "bce"])
def test_losses_match_definitions(kind):
    s, t = torch.sigmoid(LOGITS), TARGETS
    expected = {
        "mse": ((s - t) ** 2).mean(),
        "mae": (s - t).abs().mean(),
        "huber": torch.where((s - t).abs() < 0.1, 0.5 * (s - t) ** 2,
                             0.1 * ((s - t).abs() - 0.05)).mean(),
        "bce": -(t * torch.log(s) + (1 - t) * torch.log(1 - s)).mean(),
    }[kind]
    assert torch.allclose(ScoreLoss(kind, huber_delta=0.1)(LOGITS, TARGETS), expected, atol=1e-6)


def test_weighted_loss_and_float32_under_autocast():
    loss = ScoreLoss("weighted", {"mse": 1.0, "bce": 0.5})
    expected = ScoreLoss("mse")(LOGITS, TARGETS) + 0.5 * ScoreLoss("bce")(LOGITS, TARGETS)
    assert torch.allclose(loss(LOGITS, TARGETS), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(LOGITS.bfloat16(), TARGETS)
    assert value.dtype == torch.float32
    with pytest.raises(ValueError, match=r"`optim\.loss_weights` keys must be among"):
        ScoreLoss("weighted", {"dice": 1.0})
    with pytest.raises(ValueError, match=r"`optim\.loss_weights` must be a mapping"):
        ScoreLoss("weighted")


# --------------------------------------------------------------- metrics
def test_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    targets = rng.uniform(0, 1, 64).astype(np.float32)
    scores = np.clip(targets + rng.normal(0, 0.25, 64), 0, 1).astype(np.float32)
    metrics = ScoreMetrics("val", threshold=0.4)
    for chunk in np.array_split(np.arange(64), 3):  # several batches, one epoch
        metrics.update(torch.from_numpy(scores[chunk]), torch.from_numpy(targets[chunk]))
    out = {k: float(v) for k, v in metrics.compute().items()}
    truth, pred = targets > 0.5, scores > 0.4
    assert out["val/auroc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-5)
    assert out["val/f1"] == pytest.approx(f1_score(truth, pred), abs=1e-5)
    assert out["val/recall"] == pytest.approx(recall_score(truth, pred), abs=1e-5)
    assert out["val/specificity"] == pytest.approx(recall_score(~truth, ~pred), abs=1e-5)
    assert out["val/accuracy"] == pytest.approx((truth == pred).mean(), abs=1e-5)
    assert out["val/r2"] == pytest.approx(r2_score(targets, scores), abs=1e-4)
    assert out["val/pearson"] == pytest.approx(pearsonr(targets, scores)[0], abs=1e-4)
    assert out["val/mse"] == pytest.approx(((scores - targets) ** 2).mean(), abs=1e-6)
    metrics.reset()
    assert not metrics.updated


def test_metrics_undefined_for_one_class_are_nan():
    metrics = ScoreMetrics("train")
    metrics.update(torch.tensor([0.2, 0.3, 0.1]), torch.tensor([0.1, 0.2, 0.3]))
    out = metrics.compute()
    assert math.isnan(float(out["train/auroc"])) and math.isfinite(float(out["train/mse"]))


# ------------------------------------------------------------- optimizer
def test_param_groups_no_decay_on_norms_biases_tokens():
    net = MultimodalAlzheimersNet(**TINY)
    decay, no_decay = param_groups(net, 0.01)
    names = {id(p): n for n, p in net.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert "fusion.absent_token" in no_decay_names
    assert any("relative_position_bias_table" in n for n in no_decay_names)
    assert all(not n.endswith(".bias") and "norm" not in n for n in decay_names)
    assert "fusion.mri_proj.0.weight" in decay_names
    assert len(decay_names) + len(no_decay_names) == len(list(net.parameters()))
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0


def test_image_lr_scale_gives_the_image_branch_its_own_rate():
    from types import SimpleNamespace

    from gazimed_lab.models import build_optimizer

    net = MultimodalAlzheimersNet(in_channels=2, **TINY)
    names = {id(p): n for n, p in net.named_parameters()}
    groups = {g["name"]: g for g in param_groups(net, 0.01, lr=1e-3, image_lr_scale=4.0)}
    assert list(groups) == ["decay", "no_decay", "image_decay", "image_no_decay"]
    group_names = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    image_prefixes = ("mri_encoder.", "pet_encoder.", "fusion.", "image_norm.")
    assert all(n.startswith(image_prefixes) for k in ("image_decay", "image_no_decay")
               for n in group_names[k])
    assert all(n.startswith(("clinical_encoder.", "head.")) for k in ("decay", "no_decay")
               for n in group_names[k])
    assert "fusion.absent_token" in group_names["image_no_decay"]
    assert "fusion.mri_proj.0.weight" in group_names["image_decay"]
    # still no decay on norms and biases, in both branches
    for key in ("decay", "image_decay"):
        assert all(not n.endswith(".bias") and "norm" not in n for n in group_names[key])
        assert groups[key]["weight_decay"] == 0.01
    for key in ("no_decay", "image_no_decay"):
        assert groups[key]["weight_decay"] == 0.0
    assert groups["decay"]["lr"] == groups["no_decay"]["lr"] == pytest.approx(1e-3)
    assert groups["image_decay"]["lr"] == groups["image_no_decay"]["lr"] == pytest.approx(4e-3)
    assert sum(len(v) for v in group_names.values()) == len(list(net.parameters()))
    # scale 1 keeps the two plain groups; a scale <= 0 is refused
    assert [g["name"] for g in param_groups(net, 0.01, image_lr_scale=1.0)] == [
        "decay", "no_decay"]
    with pytest.raises(ValueError, match="image_lr_scale"):
        param_groups(net, 0.01, image_lr_scale=0.0)
    # the schedule scales every group by the same factor
    optim = SimpleNamespace(learning_rate=1e-3, image_lr_scale=4.0, weight_decay=0.01,
                            betas=[0.9, 0.999], eps=1e-8, warmup_epochs=1, min_lr=1e-5)
    opt, sched = build_optimizer(net, optim, total_steps=20, steps_per_epoch=5)
    for _ in range(12):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["image_decay"] == pytest.approx(4 * lrs["decay"])
    assert lrs["decay"] == pytest.approx(WarmupCosine(5, 20, 1e-3, 1e-5).lr(12))


def test_warmup_then_cosine_at_known_steps():
    sched = WarmupCosine(warmup_steps=10, total_steps=110, base_lr=1e-3, min_lr=1e-5)
    assert sched.lr(0) == pytest.approx(1e-4)
    assert sched.lr(4) == pytest.approx(5e-4)
    assert sched.lr(9) == pytest.approx(1e-3)
    assert sched.lr(10) == pytest.approx(1e-3)
    assert sched.lr(60) == pytest.approx((1e-3 + 1e-5) / 2)
    assert sched.lr(35) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert sched.lr(110) == pytest.approx(1e-5) and sched.lr(500) == pytest.approx(1e-5)
    # the LambdaLR wrapper gives the same values when stepped
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, sched)
    seen = []
    for _ in range(61):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        lr_sched.step()
    assert seen[0] == pytest.approx(1e-4) and seen[60] == pytest.approx((1e-3 + 1e-5) / 2)


@pytest.mark.parametrize("pooling", ["attention", "flatten", "mean"])
def test_fusion_pooling_modes_train_on_a_batch_of_one(pooling):
    torch.manual_seed(0)
    net = MultimodalAlzheimersNet(in_channels=2, **{**TINY, "fusion_pooling": pooling}).train()
    batch = tiny_batch()
    one = {k: v[:1] for k, v in batch.items()}
    out = net(*net_inputs(one))
    assert out.shape == (1,) and torch.isfinite(out).all()


def test_position_aware_pooling_sees_where_tokens_are():
    from gazimed_lab.models.fusion import CrossModalFusion

    torch.manual_seed(0)
    feats = [torch.randn(2, 8, 2, 2, 2)]
    swapped = [feats[0].flip(2)]  # same tokens, other places
    for pooling in ("attention", "flatten"):
        fusion = CrossModalFusion([8], [(2, 2, 2)], fusion_dim=12, heads=2, with_pet=False,
                                  pooling=pooling).eval()
        with torch.no_grad():
            changed = not torch.allclose(fusion(feats), fusion(swapped), atol=1e-6)
        assert changed, pooling


def test_unknown_pooling_is_rejected():
    with pytest.raises(ValueError, match=r"`fusion_pooling` must be one of .*got 'max'"):
        MultimodalAlzheimersNet(in_channels=2, **{**TINY, "fusion_pooling": "max"})


def test_clinical_feature_dropout_hides_values_in_training_only():
    from gazimed_lab.models.clinical import ClinicalEncoder

    torch.manual_seed(0)
    enc = ClinicalEncoder(6, (8,), 4, dropout=0.0, feature_dropout=0.5)
    x = torch.randn(64, 6)
    seen = []
    enc.mlp.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0][:, 6:].clone()))
    enc.train()(x)
    enc.eval()(x)
    assert 0.3 < 1 - seen[0].mean().item() < 0.7  # about half hidden in training
    assert seen[1].min().item() == 1.0  # nothing hidden in evaluation
    with pytest.raises(ValueError, match=r"`clinical_feature_dropout` must be in \[0, 1\)"):
        ClinicalEncoder(6, (8,), 4, feature_dropout=1.0)


def test_deep_supervision_adds_branch_losses_in_training_only():
    net = MultimodalAlzheimersNet(in_channels=2, **{**TINY, "deep_supervision": True}).eval()
    batch = tiny_batch()
    with torch.no_grad():
        fused, aux = net.branch_logits(*net_inputs(batch))
        assert set(aux) == {"image", "clinical"} and fused.shape == aux["image"].shape == (4,)
        assert torch.equal(fused, net.logits(*net_inputs(batch)))
    assert MultimodalAlzheimersNet(**TINY).branch_logits(*net_inputs(batch))[1] == {}
    assert MultimodalAlzheimersNet(**{**TINY, "mode": "image_only", "deep_supervision": True}
                                   ).aux_heads is None  # one branch: nothing to supervise

    cfg = load_config("cpu-demo", overrides=[*TINY_OVERRIDES, "model.dropout=0.0",
                                             "model.clinical_feature_dropout=0.0",
                                             "model.modality_dropout=0.0"])
    plain = AlzheimersLightningModule(cfg, spec=tiny_spec())
    torch.manual_seed(0)
    weights = {"model.deep_supervision=true": 0.0, "model.aux_loss_weight=2.0": 2.0}
    ds = AlzheimersLightningModule(
        load_config("cpu-demo", overrides=[*TINY_OVERRIDES, *weights, "model.dropout=0.0",
                                           "model.clinical_feature_dropout=0.0",
                                           "model.modality_dropout=0.0"]), spec=tiny_spec())
    ds.model.load_state_dict(plain.model.state_dict(), strict=False)
    main_loss, _ = plain._step(batch, "train")
    total, _ = ds._step(batch, "train")
    _, aux = ds.model.branch_logits(*net_inputs(batch)[:1], batch["modality_mask"],
                                    batch["clinical_features"], batch["clinical_mask"])
    aux_loss = torch.stack([ds.loss_fn(a, batch["targets"]) for a in aux.values()]).mean()
    assert torch.allclose(total, main_loss + 2.0 * aux_loss, atol=1e-6)
    val_loss, _ = ds._step(batch, "val")  # validation scores the fused head only
    assert torch.allclose(val_loss, main_loss, atol=1e-6)
    with pytest.raises(ConfigError, match=r"`model.aux_loss_weight` must be >= 0"):
        load_config("cpu-demo", overrides=["model.aux_loss_weight=-1"])
