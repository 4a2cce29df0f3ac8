"""Integrated gradients (completeness), cohort reference and region maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_models import GRID, TINY, tiny_batch, tiny_spec

from gazimed_lab.attribution import (
    cohort_reference,
    group_attribution,
    integrated_gradients,
    regional_map,
)
from gazimed_lab.data.atlas import Atlas
from gazimed_lab.models import AlzheimersLightningModule


def test_attributions_add_up_to_the_score_difference():
    torch.manual_seed(0)
    model = AlzheimersLightningModule(
        "cpu-demo", spec=tiny_spec(),
        **{k: v for k, v in TINY.items() if k not in ("img_size", "clinical_features_dim")},
    )
    batch = tiny_batch()
    reference = cohort_reference([tiny_batch(seed=1), tiny_batch(seed=2)])
    attr = integrated_gradients(model, batch, reference, steps=64)
    assert attr.shape == tuple(batch["images"].shape)
    assert model.training  # the mode is restored
    model.eval()
    with torch.no_grad():
        gap = model(batch) - model({**batch, "images": reference.expand_as(batch["images"])})
    np.testing.assert_allclose(attr.reshape(4, -1).sum(axis=1), gap.numpy(), atol=2e-3)
    with pytest.raises(ValueError, match=r"`reference` must have the image shape"):
        integrated_gradients(model, batch, reference[:1])


def test_cohort_reference_averages_pet_over_subjects_with_pet():
    a = {"images": torch.ones(2, 2, *GRID), "modality_mask": torch.tensor([[1.0, 1.0],
                                                                            [1.0, 0.0]])}
    a["images"][1, 1] = 100.0  # the absent PET's content must not count
    b = {"images": torch.full((1, 2, *GRID), 3.0), "modality_mask": torch.ones(1, 2)}
    ref = cohort_reference([a, b])
    assert torch.allclose(ref[0], torch.full(GRID, 5.0 / 3))
    assert torch.allclose(ref[1], torch.full(GRID, 2.0))


def test_regional_map_sums_within_regions():
    labels = np.zeros((2, 2, 2), np.int32)
    labels[0] = 1
    labels[1, 0] = 4
    atlas = Atlas("toy", labels, (1, 4), ("a", "b"))
    m = np.arange(8, dtype=float).reshape(2, 2, 2)
    out = regional_map(m, atlas)
    assert np.all(out[0] == 0 + 1 + 2 + 3) and np.all(out[1, 0] == 4 + 5)
    assert np.all(out[1, 1] == 0)


def test_group_attribution_averages_per_group_with_a_cap():
    torch.manual_seed(0)
    model = AlzheimersLightningModule(
        "cpu-demo", spec=tiny_spec(),
        **{k: v for k, v in TINY.items() if k not in ("img_size", "clinical_features_dim")},
    )
    batch = tiny_batch()
    reference = cohort_reference([tiny_batch(seed=1)])
    ids = batch["subject_id"]
    groups = {ids[0]: "AD", ids[1]: "AD", ids[2]: "CN"}  # ids[3]: no group
    maps = group_attribution(model, [batch], groups, reference, max_per_group=1, steps=4)
    single = integrated_gradients(model, batch, reference, steps=4)
    assert set(maps) == {"AD", "CN"}
    np.testing.assert_allclose(maps["AD"], single[0], atol=1e-6)  # capped at the first AD
    np.testing.assert_allclose(maps["CN"], single[2], atol=1e-6)
