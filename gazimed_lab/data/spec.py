"""The fitted input contract: everything the data decide about the model, in one object.

An :class:`InputSpec` holds the grid (shape and affine), the image channels, the PET
reference region, the MRI normalization, the cache dtype, and the clinical feature
names with their imputation and scaling statistics (fitted on the training split).

- The data layer builds it once, from the config's data choices and the training
  split (:attr:`gazimed_lab.data.datamodule.MNIDataModule.spec`).
- It is the only data-derived input to building the network
  (:func:`gazimed_lab.models.network.build_network`).
- A checkpoint saves it once (``hyper_parameters["spec"]``), and prediction needs
  nothing else besides a manifest (:class:`gazimed_lab.data.predict.PredictDataModule`).
- :meth:`InputSpec.differences` is the one place where two specs (a model's and a data
  module's, or a checkpoint's and a resumed run's) are compared.

A spec may be *unfitted*: sizes only, no clinical statistics. That is what a model
built from keywords (``AlzheimersLightningModule(img_size=..., in_channels=2,
clinical_features_dim=118)``) or from a config alone has; at fit time it adopts the
data module's fitted spec when the sizes agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gazimed_lab.config import CACHE_DTYPES, CHANNELS, PET_REFERENCES
from gazimed_lab.data.clinical import ClinicalStats
from gazimed_lab.data.grid import Grid
from gazimed_lab.data.transforms import MRI_NORMALIZATION

__all__ = ["KNOWN_SPEC_VERSIONS", "SPEC_VERSION", "InputSpec", "SpecError"]

#: Layout version of :meth:`InputSpec.to_dict`. Version 1 is the ``preprocessing`` dict
#: that gazimed-lab 0.1 saved in checkpoints (same fields); it is read as version 2.
SPEC_VERSION = 2
KNOWN_SPEC_VERSIONS: tuple[int, ...] = (1, 2)


class SpecError(ValueError):
    """An input spec is malformed, of an unknown version, or does not fit the data."""


def _floats(values: Any) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


@dataclass(frozen=True)
class InputSpec:
    """What the data decide about the model (frozen, versioned, JSON-able).

    Attributes
    ----------
    grid
        The MNI grid every volume is conformed to; its shape is the network's input size.
    channels
        Image channels: 1 (MRI), 2 (MRI, PET) or 3 (MRI, PET, PET - MRI).
    pet_reference
        Region PET is divided by.
    n_features
        Number of clinical features (``None``: unknown, in an unfitted spec of an
        image-only model built without data).
    feature_names
        Clinical column names in feature-vector order (``None`` in an unfitted spec
        built from a feature count only).
    medians, means, stds
        Training-split imputation and scaling statistics, one per feature (``None``
        in an unfitted spec).
    mri_normalization, cache_dtype
        How MRI is normalized; how cached volumes are stored.
    version
        :data:`SPEC_VERSION`.
    """

    grid: Grid
    channels: int
    pet_reference: str
    n_features: int | None
    feature_names: tuple[str, ...] | None = None
    medians: tuple[float, ...] | None = None
    means: tuple[float, ...] | None = None
    stds: tuple[float, ...] | None = None
    mri_normalization: str = MRI_NORMALIZATION
    cache_dtype: str = "float16"
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        checks = [
            (self.channels in CHANNELS, "channels", f"one of {CHANNELS}", self.channels),
            (self.pet_reference in PET_REFERENCES, "pet_reference",
             f"one of {PET_REFERENCES}", self.pet_reference),
            (self.cache_dtype in CACHE_DTYPES, "cache_dtype", f"one of {CACHE_DTYPES}",
             self.cache_dtype),
            (self.n_features is None or self.n_features >= 0, "n_features", ">= 0 or None",
             self.n_features),
        ]
        for ok, what, expected, got in checks:
            if not ok:
                raise SpecError(f"input spec `{what}` must be {expected}, got {got!r}")
        if self.feature_names is not None and len(self.feature_names) != self.n_features:
            raise SpecError(
                f"input spec `feature_names` must hold n_features={self.n_features} names, "
                f"got {len(self.feature_names)}"
            )
        stats = (self.medians, self.means, self.stds)
        if any(s is not None for s in stats):
            if self.feature_names is None or any(
                s is None or len(s) != self.n_features for s in stats
            ):
                raise SpecError(
                    "input spec statistics must come with the feature names and hold one "
                    f"median, mean and std per feature ({self.n_features}), got "
                    f"{[None if s is None else len(s) for s in stats]}"
                )

    # ----------------------------------------------------------------- builders
    @classmethod
    def fit(cls, grid: Grid, channels: int, pet_reference: str, stats: ClinicalStats,
            cache_dtype: str = "float16") -> InputSpec:
        """Build a fitted spec from the data choices and the training split's statistics."""
        return cls(
            grid=grid, channels=int(channels), pet_reference=str(pet_reference),
            n_features=len(stats.feature_names),
            feature_names=tuple(stats.feature_names), medians=_floats(stats.medians),
            means=_floats(stats.means), stds=_floats(stats.stds), cache_dtype=str(cache_dtype),
        )

    @classmethod
    def unfitted(cls, grid: Grid, channels: int, pet_reference: str = "whole_brain",
                 n_features: int | None = None, feature_names: list[str] | None = None,
                 cache_dtype: str = "float16") -> InputSpec:
        """Sizes only (no statistics): what a model built without data knows."""
        names = tuple(str(n) for n in feature_names) if feature_names is not None else None
        return cls(grid=grid, channels=int(channels), pet_reference=str(pet_reference),
                   n_features=len(names) if names is not None else (
                       None if n_features is None else int(n_features)),
                   feature_names=names, cache_dtype=str(cache_dtype))

    # --------------------------------------------------------------- properties
    @property
    def fitted(self) -> bool:
        """Whether the clinical statistics are known (prediction needs them)."""
        return self.medians is not None

    @property
    def img_size(self) -> tuple[int, int, int]:
        """Spatial input size ``(D, H, W)``: the grid's shape."""
        return self.grid.shape

    @property
    def clinical(self) -> ClinicalStats:
        """The clinical statistics as :class:`ClinicalStats` (fitted specs only)."""
        if not self.fitted:
            raise SpecError(
                "input spec must be fitted (clinical statistics from a training split) to "
                "transform clinical features, got an unfitted spec; train with MNIDataModule"
            )
        assert self.feature_names is not None and self.medians is not None
        assert self.means is not None and self.stds is not None
        return ClinicalStats(list(self.feature_names), list(self.medians), list(self.means),
                             list(self.stds))

    def describe(self) -> str:
        """One line: grid, channels, PET reference, features."""
        state = "fitted" if self.fitted else "unfitted"
        return (f"grid {self.grid.name} {self.grid.shape}, {self.channels} channel(s), PET / "
                f"{self.pet_reference}, {self.n_features} clinical features ({state})")

    # -------------------------------------------------------------- comparison
    def differences(self, other: InputSpec, names: tuple[str, str] = ("model", "data")
                    ) -> list[str]:
        """``"channels: model 2, data 1"`` for every way ``other`` does not fit this spec.

        Sizes (grid, channels, feature count) always count; feature names when both
        specs have them; PET reference, normalization, cache dtype and statistics when
        both are fitted.
        """
        a, b = names
        out: list[str] = []

        def differ(what: str, mine: Any, theirs: Any) -> None:
            out.append(f"{what}: {a} {mine!r}, {b} {theirs!r}")

        if self.grid.shape != other.grid.shape:
            differ("grid shape", self.grid.shape, other.grid.shape)
        elif not np.allclose(self.grid.affine, other.grid.affine, atol=1e-4):
            differ("grid affine", np.round(self.grid.affine, 3).tolist(),
                   np.round(other.grid.affine, 3).tolist())
        if self.channels != other.channels:
            differ("channels", self.channels, other.channels)
        if None not in (self.n_features, other.n_features) and (
                self.n_features != other.n_features):
            differ("clinical features", self.n_features, other.n_features)
        elif (self.feature_names is not None and other.feature_names is not None
              and self.feature_names != other.feature_names):
            changed = [x for x, y in zip(self.feature_names, other.feature_names) if x != y]
            differ("clinical feature names", changed[:3], [
                y for x, y in zip(self.feature_names, other.feature_names) if x != y][:3])
        if self.fitted and other.fitted:
            for what in ("pet_reference", "mri_normalization", "cache_dtype"):
                if getattr(self, what) != getattr(other, what):
                    differ(what, getattr(self, what), getattr(other, what))
            for what in ("medians", "means", "stds"):
                mine, theirs = getattr(self, what), getattr(other, what)
                if not np.allclose(mine, theirs, rtol=1e-6, atol=1e-9):
                    differ(f"clinical {what}", "fitted on another training split", "refitted")
        return out

    def adopt(self, other: InputSpec, names: tuple[str, str] = ("model", "data"),
              where: str = "") -> InputSpec:
        """Return ``other`` when it fits this spec; raise naming every difference.

        The one place where a model's spec meets the data's: an unfitted spec (sizes
        only) takes the data's fitted statistics; a fitted one must agree fully.
        """
        diffs = self.differences(other, names)
        if diffs:
            raise SpecError(
                f"{names[1]} must fit the {names[0]}'s input spec, got {len(diffs)} "
                f"difference(s){f' ({where})' if where else ''}: {'; '.join(diffs)}. Build the "
                f"model from the data (AlzheimersLightningModule(cfg, spec=dm.spec)), or the "
                f"data from the model (MNIDataModule(cfg, spec=model.spec))"
            )
        return other if other.fitted or not self.fitted else self

    # ------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (see :meth:`from_dict`)."""
        return {
            "version": self.version,
            "grid": {"name": self.grid.name, "shape": list(self.grid.shape),
                     "affine": [list(row) for row in self.grid.affine_tuple]},
            "channels": self.channels,
            "pet_reference": self.pet_reference,
            "mri_normalization": self.mri_normalization,
            "cache_dtype": self.cache_dtype,
            "n_features": self.n_features,
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "medians": None if self.medians is None else list(self.medians),
            "means": None if self.means is None else list(self.means),
            "stds": None if self.stds is None else list(self.stds),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any] | InputSpec, source: str = "") -> InputSpec:
        """Rebuild from :meth:`to_dict` output (or a gazimed-lab 0.1 ``preprocessing`` dict).

        Raises
        ------
        SpecError
            Unknown version (naming ``source`` and both versions) or missing fields.
        """
        if isinstance(values, InputSpec):
            return values
        where = f" ({source})" if source else ""
        if not isinstance(values, dict):
            raise SpecError(f"input spec must be a dict, got {type(values).__name__}{where}")
        version = values.get("version")
        if version not in KNOWN_SPEC_VERSIONS:
            raise SpecError(
                f"input spec version must be one of {list(KNOWN_SPEC_VERSIONS)} (this "
                f"gazimed-lab reads up to {SPEC_VERSION}), got {version!r}{where}; it was "
                "written by another gazimed-lab version: use that version, or retrain"
            )
        try:
            grid = values["grid"]
            names = values.get("feature_names")
            spec = cls(
                grid=Grid(str(grid["name"]), tuple(int(s) for s in grid["shape"]),  # type: ignore[arg-type]
                          tuple(tuple(float(v) for v in row) for row in grid["affine"])),
                channels=int(values["channels"]),
                pet_reference=str(values["pet_reference"]),
                n_features=values["n_features"] if "n_features" in values else len(names or ()),
                feature_names=None if names is None else tuple(str(n) for n in names),
                medians=_floats(values.get("medians")),
                means=_floats(values.get("means")),
                stds=_floats(values.get("stds")),
                mri_normalization=str(values.get("mri_normalization", MRI_NORMALIZATION)),
                cache_dtype=str(values.get("cache_dtype", "float16")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SpecError):
                raise SpecError(f"{exc}{where}") from exc
            raise SpecError(
                f"input spec must hold grid, channels, pet_reference and the clinical "
                f"feature fields, got a dict without {exc}{where}"
            ) from exc
        return replace(spec, version=SPEC_VERSION)
