"""Group attribution maps of a trained model on a cohort, scored against the known truth.

:func:`group_maps` computes integrated-gradients maps (from the cohort-mean image,
:mod:`gazimed_lab.attribution`) averaged over the subjects of one group (e.g. the AD
subjects of an external cohort); :func:`write_group_maps` saves them as NIfTI with an
atlas region ranking per modality and, when the manifest is a generated cohort
(``truth/`` beside it), the voxel-level AUROC of each map against the generator's effect
regions (:func:`~gazimed_lab.evaluation.localization.localization_table`). This is what
``gazimed-lab evaluate --maps GROUP`` writes into ``<out>/maps/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gazimed_lab.data.grid import Grid
from gazimed_lab.data.images import problem

__all__ = ["GroupMaps", "group_maps", "reads_images", "write_group_maps"]

#: Channel names of the image tensor, in order.
MODALITIES = ("MRI", "PET", "PET-MRI")


@dataclass
class GroupMaps:
    """Mean attribution maps of one group: ``maps[modality]`` is ``(D, H, W)``."""

    group: str
    n_subjects: int
    grid: Grid
    maps: dict[str, np.ndarray]
    localization: pd.DataFrame | None
    rankings: dict[str, pd.DataFrame]


def _batches(loader: Any, device: torch.device) -> Iterator[dict[str, Any]]:
    for batch in loader:
        yield {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def reads_images(model: Any) -> bool:
    """Whether a loaded model has an image input (``model.mode`` other than clinical-only)."""
    return str(model.cfg.model.mode) != "clinical_only"


def group_maps(checkpoint: str | Path, manifest: str | Path, group: str = "AD",
               group_column: str = "diagnosis", max_subjects: int | None = 60,
               steps: int = 16, atlas: str | None = None,
               cache_dir: str | Path | None = None) -> GroupMaps:
    """Integrated-gradients maps of ``checkpoint`` averaged over one group of ``manifest``.

    Parameters
    ----------
    checkpoint
        A trained model's checkpoint.
    manifest
        The cohort (e.g. an external one); its ``group_column`` names the groups.
    group
        The group whose subjects are averaged (first ``max_subjects`` in manifest order).
    group_column
        The manifest column holding the groups.
    max_subjects
        At most this many subjects of the group (``None``: all).
    steps
        Integrated-gradients path points per subject.
    atlas
        Atlas of the region ranking; default the model's ``model.region_atlas``.
    cache_dir
        Preprocessed-volume cache; default the model's ``data.cache_dir``.

    Returns
    -------
    GroupMaps
        The maps per modality (inside the MNI brain mask), their localization table
        (``None`` unless the manifest has the generator's ``truth/`` beside it) and an
        atlas region ranking per modality.

    Raises
    ------
    ValueError
        If the model reads no image (clinical-only), if ``group_column`` is not a column
        of the manifest or no subject is in ``group``.
    """
    from gazimed_lab.attribution import cohort_reference, group_attribution, regional_map
    from gazimed_lab.checkpoints import load_checkpoint
    from gazimed_lab.data.atlas import atlas_on_grid
    from gazimed_lab.data.grid import template_on_grid
    from gazimed_lab.data.predict import PredictDataModule
    from gazimed_lab.evaluation.localization import localization_table, region_ranking
    from gazimed_lab.evaluation.oracle import find_truth

    model = load_checkpoint(checkpoint)
    if not reads_images(model):
        raise ValueError(problem("checkpoint", "a model that reads images (group maps are "
                                 "attributions to the images)", f"mode {model.cfg.model.mode!r}",
                                 str(checkpoint)))
    device = model.device
    dm = PredictDataModule(model.spec, manifest,
                           cache_dir=cache_dir if cache_dir is not None else
                           str(model.cfg.data.cache_dir),
                           batch_size=int(model.cfg.data.batch_size),
                           session_order_column=model.cfg.data.session_order_column)
    table = dm.subjects
    if group_column not in table.columns:
        raise ValueError(problem("group column", "a column of the manifest",
                                 repr(group_column), str(manifest)))
    groups = {str(s): str(g) for s, g in zip(table["subject_id"], table[group_column])
              if str(g) == group}
    if not groups:
        found = sorted({str(g) for g in table[group_column]})
        raise ValueError(problem("group", f"a value of `{group_column}` ({', '.join(found)})",
                                 repr(group), str(manifest)))
    loader = dm.predict_dataloader()
    reference = cohort_reference(_batches(loader, device))
    maps = group_attribution(model, _batches(loader, device), groups, reference,
                             max_per_group=max_subjects, steps=steps)[group]
    grid = dm.spec.grid
    brain = template_on_grid("brain_mask", grid)
    named = {m: maps[c] * brain for c, m in enumerate(MODALITIES[: dm.spec.channels])}
    regions = atlas_on_grid(grid, atlas or str(model.cfg.model.region_atlas))
    rankings = {m: region_ranking(regional_map(v, regions), regions) for m, v in named.items()}
    truth = find_truth(manifest)
    local = localization_table({f"{group} {m}": v for m, v in named.items()}, manifest,
                               grid) if truth is not None else None
    n = min(len(groups), max_subjects) if max_subjects else len(groups)
    return GroupMaps(group, n, grid, named, local, rankings)


def write_group_maps(result: GroupMaps, out_dir: str | Path) -> Path:
    """Save :func:`group_maps` output: NIfTI maps, ranking CSVs, localization, figures."""
    from gazimed_lab import interpret, viz
    from gazimed_lab.paths import output_path, safe_name

    folder = Path(out_dir)
    name = safe_name(result.group)
    for modality, volume in result.maps.items():
        tag = safe_name(modality)
        path = interpret.save_map_nifti(volume, result.grid, output_path(
            folder, f"group_{name}_ig_{tag}.nii.gz"))
        viz.plot_map_on_template(path, grid=result.grid, cbar_label="score attribution",
                                 title=f"{result.group} (n = {result.n_subjects}): "
                                       f"{modality} attribution",
                                 output_file=output_path(folder, f"group_{name}_ig_{tag}.png"))
        result.rankings[modality].to_csv(
            output_path(folder, f"regions_{name}_{tag}.csv"), index=False)
    if result.localization is not None:
        result.localization.to_csv(output_path(folder, "localization.csv"), index=False)
    return folder
