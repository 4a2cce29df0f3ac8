"""Map localization against known effect regions, and atlas region rankings."""

from __future__ import annotations

import numpy as np
import pytest

from gazimed_lab.data.atlas import Atlas
from gazimed_lab.evaluation.localization import localization_auroc, region_ranking


def test_localization_auroc_by_hand():
    truth = np.zeros((2, 2, 2), bool)
    truth[0, 0, :] = True                                  # 2 effect voxels of 8
    brain = np.ones((2, 2, 2), bool)
    perfect = truth * 5.0 - 1.0                            # |.|: 4 inside, 1 outside
    assert localization_auroc(perfect, truth, brain) == 1.0
    assert localization_auroc(np.ones((2, 2, 2)), truth, brain) == 0.5   # ties: chance
    scores = np.zeros((2, 2, 2))
    scores[0, 0, 0], scores[1, 1, 1] = 3.0, 2.0            # one effect voxel top, one tied low
    # positives: 3 and 0; negatives: 2, 0, 0, 0, 0, 0 -> (6 + 0.5 * 5) / 12
    assert localization_auroc(scores, truth, brain) == pytest.approx((6 + 2.5) / 12)
    with pytest.raises(ValueError, match=r"`truth mask` must be some, not all"):
        localization_auroc(scores, np.zeros((2, 2, 2), bool), brain)


def test_region_ranking_orders_regions_by_mean_absolute_value():
    labels = np.zeros((4, 4, 4), np.int32)
    labels[:2] = 1
    labels[2:, :2] = 2
    atlas = Atlas("toy", labels, (1, 2), ("front", "back"))
    m = np.zeros((4, 4, 4))
    m[2:, :2] = -2.0
    m[:2] = 1.0
    table = region_ranking(m, atlas)
    assert list(table["region"]) == ["back", "front"]
    assert list(table["mean_abs"]) == [2.0, 1.0] and list(table["voxels"]) == [16, 32]
