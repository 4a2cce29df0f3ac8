"""The multimodal network: Swin encoders, cross-modal fusion, clinical MLP, sigmoid head."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gazimed_lab.config import IMAGE_PATHWAYS, MODES, ModelConfig
from gazimed_lab.models.clinical import ClinicalEncoder, mlp
from gazimed_lab.models.encoders import N_STAGES, SwinImageEncoder, check_triple
from gazimed_lab.models.fusion import CrossModalFusion, SubjectStandardize
from gazimed_lab.models.regions import RegionEncoder

if TYPE_CHECKING:
    from gazimed_lab.data.spec import InputSpec

__all__ = ["MODES", "MultimodalAlzheimersNet", "build_network", "network_kwargs"]

_D = ModelConfig()  # the defaults, typed once in the config


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


class MultimodalAlzheimersNet(nn.Module):
    """Alzheimer's disease score in [0, 1] from MRI [+ PET] volumes and clinical features.

    The arguments are the fields of :class:`gazimed_lab.config.ModelConfig` (the user's
    choices, whose defaults they take) plus the three sizes the data decide:
    ``in_channels``, ``img_size`` and ``clinical_features_dim``. :func:`build_network`
    takes those from an :class:`~gazimed_lab.data.spec.InputSpec`.
    Channel 0 of ``images`` is the MRI and goes to the MRI encoder; channels
    ``1..`` (PET, and PET-MRI when ``in_channels == 3``) go to the PET encoder.
    Each modality is encoded once per forward pass. MRI tokens attend to PET
    tokens at ``fusion_stages`` (indices into the encoder's five outputs); a
    subject whose ``modality_mask[:, 1]`` is 0 has its PET masked out (it sees a
    learned "absent" token), and its PET tensor content is never read.

    Parameters
    ----------
    mode
        ``multimodal`` (images + clinical), ``image_only`` or ``clinical_only``.
    in_channels
        1 (MRI), 2 (MRI, PET) or 3 (MRI, PET, PET-MRI).
    img_size
        Input grid ``(D, H, W)``; padded internally to what the encoder needs.
    shared_encoder
        One set of Swin weights for both modalities (with 3 channels a learned
        1x1x1 convolution maps PET + PET-MRI to one channel first).
    modality_dropout
        Training only: probability of hiding the PET of a subject who has one.
    activation_checkpointing
        MONAI ``use_checkpoint`` in the Swin blocks.
    fusion_pooling
        ``attention`` (learned queries over position-coded tokens), ``flatten`` or
        ``mean``: how each fused stage's tokens become one vector (see fusion.py).
    **kwargs
        Every other :class:`~gazimed_lab.config.ModelConfig` field.
    """

    def __init__(
        self,
        mode: str = _D.mode,
        in_channels: int = 2,
        img_size: Sequence[int] | None = None,
        patch_size: Sequence[int] = tuple(_D.patch_size),
        embed_dim: int = _D.embed_dim,
        depths: Sequence[int] = tuple(_D.depths),
        num_heads: Sequence[int] = tuple(_D.num_heads),
        window_size: Sequence[int] = tuple(_D.window_size),
        shared_encoder: bool = _D.shared_encoder,
        fusion_stages: Sequence[int] = tuple(_D.fusion_stages),
        fusion_pooling: str = _D.fusion_pooling,
        clinical_feature_dropout: float = _D.clinical_feature_dropout,
        fusion_pool_queries: int = _D.fusion_pool_queries,
        fusion_heads: int = _D.fusion_heads,
        fusion_dim: int = _D.fusion_dim,
        clinical_features_dim: int = 118,
        clinical_hidden: Sequence[int] = tuple(_D.clinical_hidden),
        clinical_out_dim: int = _D.clinical_out_dim,
        head_hidden: Sequence[int] = tuple(_D.head_hidden),
        dropout: float = _D.dropout,
        drop_path_rate: float = _D.drop_path_rate,
        modality_dropout: float = _D.modality_dropout,
        activation_checkpointing: bool = _D.activation_checkpointing,
        deep_supervision: bool = _D.deep_supervision,
        image_pathway: str = _D.image_pathway,
        use_mri: bool = _D.use_mri,
        region_readout: str = _D.region_readout,
        region_dim: int | None = _D.region_dim,
        region_masks: Any = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {', '.join(MODES)}, got {mode!r}")
        if int(in_channels) not in (1, 2, 3):
            raise ValueError(f"`in_channels` must be 1, 2 or 3, got {in_channels}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}")
        if not 0.0 <= float(modality_dropout) <= 1.0:
            raise ValueError(f"`modality_dropout` must be in [0, 1], got {modality_dropout}")
        if image_pathway not in IMAGE_PATHWAYS:
            raise ValueError(f"`image_pathway` must be one of {IMAGE_PATHWAYS}, got "
                             f"{image_pathway!r}")
        self.mode = mode
        self.in_channels = int(in_channels)
        self.modality_dropout = float(modality_dropout)
        self.uses_images = mode != "clinical_only"
        self.uses_clinical = mode != "image_only"
        self.use_mri = bool(use_mri)
        if self.uses_images and not self.use_mri and self.in_channels < 2:
            raise ValueError(f"`in_channels` must be >= 2 without the MRI (use_mri=False: a "
                             f"PET-only model), got {in_channels}")
        # PET channels the image branch reads; the first image channel it reads.
        self.pet_channels = self.in_channels - 1 if self.uses_images else 0
        self.first_channel = 0 if self.use_mri else 1
        self.with_pet = self.uses_images and self.in_channels > 1 and self.use_mri
        self.image_pathway = image_pathway
        self.region_encoder: RegionEncoder | None = None
        self.image_width = 0
        self.mri_encoder: SwinImageEncoder | None = None
        self.pet_encoder: SwinImageEncoder | None = None
        self.pet_adapter: nn.Module | None = None
        self.fusion: CrossModalFusion | None = None
        self.clinical_encoder: ClinicalEncoder | None = None
        self.img_size: tuple[int, int, int] | None = None
        width = 0
        if self.uses_images:
            if img_size is None:
                raise ValueError(
                    "`img_size` must be 3 positive integers for mode "
                    f"{mode!r}, got None (the data grid's shape, InputSpec.img_size)"
                )
            self.img_size = check_triple("img_size", img_size)
        if self.uses_images and "regions" in image_pathway:
            if region_masks is None:
                raise ValueError("`region_masks` must be (R, D, H, W) atlas masks for the "
                                 "regions pathway, got None (build_network makes them)")
            self.region_encoder = RegionEncoder(
                region_masks, 1 if self.use_mri else 0, self.pet_channels,
                int(fusion_dim if region_dim is None else region_dim), float(dropout),
                str(region_readout))
            self.image_width += self.region_encoder.out_dim
        if self.uses_images and "swin" in image_pathway:
            stages = [int(s) for s in fusion_stages]
            if not stages or len(set(stages)) != len(stages) or any(
                s < 0 or s > N_STAGES for s in stages
            ):
                raise ValueError(
                    f"`fusion_stages` must be distinct indices in 0..{N_STAGES} (the encoder's "
                    f"{N_STAGES + 1} outputs), got {list(fusion_stages)}"
                )
            self.fusion_stages = stages
            encoder_args: dict[str, Any] = dict(
                img_size=self.img_size, patch_size=patch_size, embed_dim=embed_dim,
                depths=depths, num_heads=num_heads, window_size=window_size,
                drop_path_rate=drop_path_rate, use_checkpoint=activation_checkpointing,
                n_outputs=max(stages) + 1,
            )
            # Without the MRI (PET-only) the first encoder reads the PET channels alone.
            self.mri_encoder = SwinImageEncoder(
                1 if self.use_mri else self.pet_channels, **encoder_args)
            if self.with_pet:
                if shared_encoder:
                    if self.in_channels == 3:
                        self.pet_adapter = nn.Conv3d(2, 1, kernel_size=1)
                else:
                    self.pet_encoder = SwinImageEncoder(self.in_channels - 1, **encoder_args)
            enc = self.mri_encoder
            self.fusion = CrossModalFusion(
                [enc.stage_channels[s] for s in stages],
                [enc.stage_grids[s] for s in stages],
                fusion_dim=int(fusion_dim), heads=int(fusion_heads),
                with_pet=self.with_pet, dropout=float(dropout),
                pooling=str(fusion_pooling), pool_queries=int(fusion_pool_queries),
            )
            # Subjects differ from one another by a few percent of the feature scale
            # (same MNI anatomy, regional effects): standardize the image vector across
            # subjects, as the fusion does for each token (see fusion.py).
            self.image_norm = SubjectStandardize(int(fusion_dim))
            self.image_width += int(fusion_dim)
        width += self.image_width
        self.shared_encoder = bool(shared_encoder) and self.with_pet
        if self.uses_clinical:
            self.clinical_features_dim = int(clinical_features_dim)
            self.clinical_encoder = ClinicalEncoder(
                clinical_features_dim, clinical_hidden, clinical_out_dim, float(dropout),
                float(clinical_feature_dropout),
            )
            width += int(clinical_out_dim)
        self.head = nn.Sequential(
            mlp(width, list(head_hidden)[:-1], int(head_hidden[-1]), float(dropout))
            if len(head_hidden) else nn.Identity(),
            nn.Linear(int(head_hidden[-1]) if len(head_hidden) else width, 1),
        )
        # Deep supervision: each branch must score the target on its own too (the
        # LightningModule adds their losses, weighted by model.aux_loss_weight, in training).
        self.aux_heads: nn.ModuleDict | None = None
        if deep_supervision and self.uses_images and self.uses_clinical:
            self.aux_heads = nn.ModuleDict({
                "image": nn.Linear(self.image_width, 1),
                "clinical": nn.Linear(int(clinical_out_dim), 1),
            })
        if (self.region_encoder is not None and self.region_encoder.readout == "ridge"
                and not len(head_hidden)):
            # The ridge score (the image vector's last column) predicts the standardized
            # target: a head reading it directly starts increasing in it, at the target's
            # logit slope (about 1 per standard deviation). From a random sign it learns the
            # sign at the learning rate's pace: a head started negative was still inverted
            # after 20 cpu-demo epochs (val AUROC 0.13). (The deep-supervision image head
            # is left as it is: it trains only itself and scores nothing.)
            last = self.head[-1]
            assert isinstance(last, nn.Linear)
            with torch.no_grad():
                last.weight[0, self.image_width - 1] = 1.0

    # -------------------------------------------------- fitted input statistics
    @property
    def needs_statistics(self) -> bool:
        """Whether :meth:`fit_statistics` must run before training (regions pathway)."""
        return self.region_encoder is not None and not self.region_encoder.fitted

    def fit_statistics(self, batches: Iterable[Mapping[str, Any]]) -> int:
        """Fit the regions pathway's standardization on training batches; return the subjects.

        ``batches`` yield dicts with ``images``, ``modality_mask`` and ``targets`` (the
        data module's batches; ``targets`` needed by a ``ridge`` readout only); the PET
        statistics use the subjects whose PET is present. The LightningModule calls this
        once, before the first training epoch.
        """
        encoder = self.region_encoder
        if encoder is None:
            return 0

        def rows() -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
            for batch in batches:
                images = self._check_images(batch["images"])
                mask = batch.get("modality_mask")
                present = (mask[:, 1] > 0.5) if self.pet_channels and mask is not None else None
                yield images[:, self.first_channel:], present, batch.get("targets")

        return encoder.fit_statistics(rows())

    # ------------------------------------------------------------------ forward
    def _check_images(self, images: torch.Tensor | None) -> torch.Tensor:
        expected = (self.in_channels, *self.img_size)  # type: ignore[misc]
        if images is None or images.ndim != 5 or tuple(images.shape[1:]) != expected:
            got = None if images is None else tuple(images.shape)
            raise ValueError(
                f"`images` must have shape (B, {', '.join(map(str, expected))}), got {got}; "
                "check `model.in_channels`/`data.channels` and `model.img_size` against the grid"
            )
        return images

    def pet_present(self, modality_mask: torch.Tensor | None, batch: int,
                    device: torch.device) -> torch.Tensor:
        """PET presence ``(B,)`` bool after modality dropout (training only)."""
        if modality_mask is None:
            present = torch.ones(batch, dtype=torch.bool, device=device)
        else:
            present = modality_mask[:, 1] > 0.5
        if self.training and self.modality_dropout > 0:
            drop = torch.rand(batch, device=device) < self.modality_dropout
            present = present & ~drop
        return present

    def encode_images(
        self, images: torch.Tensor, modality_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Image branch: ``(B, C, *img_size)`` -> ``(B, image_width)``."""
        images = self._check_images(images)
        present = (self.pet_present(modality_mask, images.shape[0], images.device)
                   if self.pet_channels else None)
        vectors = []
        if self.mri_encoder is not None:
            vectors.append(self._encode_swin(images, present))
        if self.region_encoder is not None:
            vectors.append(self.region_encoder(images[:, self.first_channel:], present))
        return vectors[0] if len(vectors) == 1 else torch.cat(vectors, dim=1)

    def _encode_swin(self, images: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        first = self.mri_encoder(images[:, :1] if self.use_mri else images[:, 1:])  # type: ignore[misc]
        selected = [first[s] for s in self.fusion_stages]
        if not self.with_pet:
            return self.image_norm(self.fusion(selected))  # type: ignore[misc]
        assert present is not None
        pet = images[:, 1:]
        # A missing PET is masked out below; its tensor content is never read.
        pet = torch.where(present.view(-1, 1, 1, 1, 1), pet, torch.zeros_like(pet))
        if self.shared_encoder:
            if self.pet_adapter is not None:
                pet = self.pet_adapter(pet)
            pet_features = self.mri_encoder(pet)  # type: ignore[misc]
        else:
            pet_features = self.pet_encoder(pet)  # type: ignore[misc]
        fused = self.fusion(  # type: ignore[misc]
            selected, [pet_features[s] for s in self.fusion_stages], present
        )
        return self.image_norm(fused)

    def branch_logits(
        self,
        images: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
        clinical_features: torch.Tensor | None = None,
        clinical_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fused logits ``(B,)`` and each auxiliary head's (``{}`` without deep supervision)."""
        parts: dict[str, torch.Tensor] = {}
        if self.uses_images:
            parts["image"] = self.encode_images(images, modality_mask)  # type: ignore[arg-type]
        if self.uses_clinical:
            if clinical_features is None:
                raise ValueError(
                    f"`clinical_features` must be given for mode {self.mode!r}, got None"
                )
            parts["clinical"] = self.clinical_encoder(  # type: ignore[misc]
                clinical_features, clinical_mask)
        fused = self.head(torch.cat(list(parts.values()), dim=1)).squeeze(1)
        aux = {name: head(parts[name]).squeeze(1)
               for name, head in (self.aux_heads or {}).items()}
        return fused, aux

    def logits(
        self,
        images: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
        clinical_features: torch.Tensor | None = None,
        clinical_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pre-sigmoid scores ``(B,)`` (what the BCE loss uses)."""
        return self.branch_logits(images, modality_mask, clinical_features, clinical_mask)[0]

    def forward(
        self,
        images: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
        clinical_features: torch.Tensor | None = None,
        clinical_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores ``(B,)`` in [0, 1].

        Parameters
        ----------
        images
            ``(B, in_channels, *img_size)``: MRI, PET [, PET-MRI].
        modality_mask
            ``(B, 2)``, 1 = modality present (column 1 is PET). Default: all present.
        clinical_features, clinical_mask
            ``(B, F)`` each; mask 1 = observed. Default mask: finite values.
        """
        return torch.sigmoid(
            self.logits(images, modality_mask, clinical_features, clinical_mask).float()
        )

    # -------------------------------------------------------------------- info
    @property
    def padded_size(self) -> tuple[int, int, int] | None:
        """Grid fed to the Swin encoder (``None`` without images)."""
        return None if self.mri_encoder is None else self.mri_encoder.padded_size

    @property
    def padding(self) -> tuple[tuple[int, int], ...] | None:
        """Voxels added (before, after) per axis (``None`` without images)."""
        return None if self.mri_encoder is None else self.mri_encoder.padding

    def get_model_info(self) -> dict[str, Any]:
        """Parameters per component and the input grid / padding (JSON-able)."""
        enc = self.mri_encoder
        info: dict[str, Any] = {
            "mode": self.mode,
            "in_channels": self.in_channels,
            "shared_encoder": self.shared_encoder,
            "parameters": {
                "mri_encoder": _count(enc),
                "pet_encoder": _count(self.pet_encoder) + _count(self.pet_adapter),
                "fusion": _count(self.fusion),
                "clinical_encoder": _count(self.clinical_encoder),
                "head": _count(self.head),
                "total": _count(self),
                "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            },
        }
        if self.img_size is not None:
            info.update(img_size=list(self.img_size), image_pathway=self.image_pathway)
        if self.region_encoder is not None:
            info["parameters"]["region_encoder"] = _count(self.region_encoder)
            info["regions"] = self.region_encoder.pool.n_regions
        if enc is not None:
            info.update(
                padded_size=list(enc.padded_size),
                padding=[list(p) for p in enc.padding],
                fusion_stages=list(self.fusion_stages),
                stage_grids=[list(g) for g in enc.stage_grids],
                stage_channels=list(enc.stage_channels),
            )
        return info


def network_kwargs(model_cfg: Any, spec: InputSpec) -> dict[str, Any]:
    """Arguments of :class:`MultimodalAlzheimersNet`: the ``model`` config plus the spec.

    The spec gives the sizes (channels, grid shape, feature count) and, for the
    ``regions`` pathway, the grid the atlas (``region_atlas``) is conformed to.
    """
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(model_cfg, resolve=True) if isinstance(
        model_cfg, DictConfig) else dict(model_cfg)
    assert isinstance(values, dict)
    kwargs = {str(k): v for k, v in values.items()}
    atlas = kwargs.pop("region_atlas", _D.region_atlas)
    # Read by the LightningModule (a loss weight, the pretrained weights file and when to
    # unfreeze it), not network arguments.
    for key in ("aux_loss_weight", "pretrained", "pretrained_encoders", "freeze_encoders_epochs"):
        kwargs.pop(key, None)
    masks = None
    if "regions" in str(kwargs.get("image_pathway", _D.image_pathway)) and (
            kwargs.get("mode", _D.mode) != "clinical_only"):
        from pathlib import Path

        from gazimed_lab.data.atlas import ATLASES, atlas_on_grid

        names = None if atlas in ATLASES else Path(str(atlas)).with_suffix("").with_suffix(".txt")
        masks = atlas_on_grid(spec.grid, atlas, names).masks()
    return {**kwargs, "in_channels": spec.channels, "img_size": spec.img_size,
            "clinical_features_dim": spec.n_features or 0, "region_masks": masks}


def build_network(model_cfg: Any, spec: InputSpec) -> MultimodalAlzheimersNet:
    """Build the network of a ``model`` config section and an input spec (its only data input)."""
    return MultimodalAlzheimersNet(**network_kwargs(model_cfg, spec))
