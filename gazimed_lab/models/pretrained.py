"""Pretrained Swin encoder weights from a local file, in MONAI's layouts, with a report.

``model.pretrained`` names a file (nothing downloads) holding Swin transformer weights in
one of the layouts MONAI users have:

- a ``SwinUNETR`` state dict (``model.state_dict()``, optionally under ``state_dict``):
  encoder keys ``swinViT.<name>``; the decoder's keys are ignored;
- the self-supervised ``SwinViT`` checkpoint of MONAI's pretraining tutorial
  (``model_swinvit.pt``): ``{"state_dict": {"module.<name>": ...}}``; its heads
  (rotation, contrastive, reconstruction) are ignored;
- a bare ``SwinTransformer`` state dict (``<name>`` keys).

:func:`load_pretrained` copies every tensor whose name and shape fit into the chosen
encoders (``model.pretrained_encoders``: ``both``, ``mri`` or ``pet``) and returns a
:class:`PretrainedReport`: per encoder the loaded, missing (left at their random
initialization), unexpected (e.g. the deeper stages a network does not build) and
shape-mismatched keys (e.g. a 1-channel patch embedding for a 2-channel PET encoder),
each named. An encoder of which fewer than half the tensors fit (another architecture)
is an error naming the file, and the encoder is left as it was. The file is
read with ``weights_only=True``: no pickled code runs.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gazimed_lab.config import PRETRAINED_TARGETS

__all__ = ["EncoderLoad", "PretrainedReport", "load_pretrained", "read_swin_weights",
           "set_encoders_trainable"]

#: Top-level names of a MONAI ``SwinTransformer``'s state dict.
_SWIN_ROOTS = ("patch_embed.", "layers1.", "layers2.", "layers3.", "layers4.", "norm")


@dataclass
class EncoderLoad:
    """What one encoder took from the file."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "name: file (..) vs encoder (..)"


@dataclass
class PretrainedReport:
    """The file, its layout, the keys it held outside the encoder, and each encoder's load."""

    file: str
    layout: str
    ignored: list[str]
    encoders: dict[str, EncoderLoad]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what the run folder's ``pretrained.json`` holds)."""
        return asdict(self)

    def summary(self) -> str:
        """One line per encoder: counts of loaded / missing / unexpected / mismatched keys."""
        lines = [f"pretrained Swin weights from {self.file} ({self.layout}; "
                 f"{len(self.ignored)} keys outside the encoder ignored)"]
        for name, load in self.encoders.items():
            lines.append(f"  {name} encoder: {len(load.loaded)} loaded, {len(load.missing)} "
                         f"missing, {len(load.unexpected)} unexpected, {len(load.mismatched)} "
                         "shape mismatches" + (f" ({'; '.join(load.mismatched[:3])})"
                                               if load.mismatched else ""))
        return "\n".join(lines)


def read_swin_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Read a weights file: ``(swin tensors by SwinTransformer name, layout, ignored keys)``.

    Raises
    ------
    FileNotFoundError
        The path is not a file.
    ValueError
        The file cannot be read safely, holds no tensors, or none of them is a Swin
        transformer weight.
    """
    path = Path(path)
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "a missing path"
        raise FileNotFoundError(f"`model.pretrained` must be a weights file, got {kind} "
                                f"({path})")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"`model.pretrained` must hold only tensors and plain values (read "
                         f"with weights_only=True, so no pickled code runs), got something "
                         f"else ({path})") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"`model.pretrained` must be a torch file, got one torch cannot read "
                         f"({path}): {exc}") from exc
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"`model.pretrained` must hold a state dict of tensors, got "
                         f"{type(raw).__name__} ({path})")
    keys = [str(k) for k in state if torch.is_tensor(state[k])]
    module = all(k.startswith("module.") for k in keys)
    if module:
        keys_in = {k[len("module."):]: k for k in keys}
    else:
        keys_in = {k: k for k in keys}
    unetr = any(k.startswith("swinViT.") for k in keys_in)
    weights: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for name, original in keys_in.items():
        inner = name[len("swinViT."):] if unetr and name.startswith("swinViT.") else (
            None if unetr else name)
        if inner is not None and inner.startswith(_SWIN_ROOTS):
            weights[inner] = state[original]
        else:
            ignored.append(original)
    if not weights:
        raise ValueError(f"`model.pretrained` must hold Swin transformer weights (SwinUNETR "
                         f"`swinViT.*`, SwinViT `module.*` or SwinTransformer keys such as "
                         f"`patch_embed.proj.weight`), got none of them ({path}; first keys: "
                         f"{keys[:3]})")
    layout = ("SwinUNETR state dict" if unetr else
              "SwinViT self-supervised checkpoint" if module else "SwinTransformer state dict")
    return weights, layout, ignored


def _encoders(net: nn.Module, which: str) -> dict[str, nn.Module]:
    if which not in PRETRAINED_TARGETS:
        raise ValueError(f"`model.pretrained_encoders` must be one of "
                         f"{', '.join(PRETRAINED_TARGETS)}, got {which!r}")
    first = getattr(net, "mri_encoder", None)
    if first is None:
        pathway = getattr(net, "image_pathway", type(net).__name__)
        raise ValueError(f"`model.pretrained` must be used with a Swin image pathway "
                         f"(model.image_pathway swin or swin+regions), got {pathway!r}")
    pet = getattr(net, "pet_encoder", None)
    if not getattr(net, "use_mri", True):  # PET-only: the first encoder reads the PET
        available = {"pet": first}
    elif pet is None:  # MRI only, or one encoder shared by both modalities
        shared = bool(getattr(net, "shared_encoder", False))
        available = {"mri+pet" if shared else "mri": first}
    else:
        available = {"mri": first, "pet": pet}
    chosen = {name: enc for name, enc in available.items()
              if which == "both" or which in name.split("+")}
    if not chosen:
        raise ValueError(f"`model.pretrained_encoders` must name an encoder this network has "
                         f"({', '.join(available)}), got {which!r}")
    return chosen


def _plan(encoder: nn.Module, weights: dict[str, torch.Tensor]
          ) -> tuple[EncoderLoad, dict[str, torch.Tensor]]:
    """Match ``weights`` to ``encoder``: the report and the state dict to load."""
    target = encoder.swin.state_dict()  # type: ignore[union-attr]
    report = EncoderLoad()
    merged = dict(target)
    for name, tensor in target.items():
        if name not in weights:
            report.missing.append(name)
        elif tuple(weights[name].shape) != tuple(tensor.shape):
            report.mismatched.append(f"{name}: file {tuple(weights[name].shape)} vs encoder "
                                     f"{tuple(tensor.shape)}")
        else:
            merged[name] = weights[name].to(dtype=tensor.dtype)
            report.loaded.append(name)
    report.unexpected = [name for name in weights if name not in target]
    return report, merged


def load_pretrained(net: nn.Module, path: str | Path, which: str = "both") -> PretrainedReport:
    """Copy the fitting tensors of ``path`` into ``net``'s Swin encoders; report each key.

    Raises
    ------
    ValueError
        The network has no Swin encoder, ``which`` names none of its encoders, the file
        holds no Swin weights (see :func:`read_swin_weights`), or nothing in it fits an
        encoder.
    """
    encoders = _encoders(net, which)
    weights, layout, ignored = read_swin_weights(path)
    loads: dict[str, EncoderLoad] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    for name, encoder in encoders.items():
        load, states[name] = _plan(encoder, weights)
        total = len(load.loaded) + len(load.missing) + len(load.mismatched)
        if 2 * len(load.loaded) < total:  # another architecture: nothing sensible to load
            detail = "; ".join(load.mismatched[:2]) or "no name in common"
            raise ValueError(f"`model.pretrained` must fit the {name} encoder, got "
                             f"{len(load.loaded)} of its {total} tensors of matching name and "
                             f"shape ({path}: {detail}); check embed_dim, depths, num_heads, "
                             "window_size and patch_size against the file")
        loads[name] = load
    for name, encoder in encoders.items():  # every encoder fits: load them all
        encoder.swin.load_state_dict(states[name], strict=True)  # type: ignore[union-attr]
    return PretrainedReport(str(path), layout, ignored, loads)


def set_encoders_trainable(net: nn.Module, which: str, trainable: bool) -> int:
    """Freeze (``False``) or unfreeze the chosen Swin encoders; return their parameter count."""
    count = 0
    for encoder in _encoders(net, which).values():
        for param in encoder.parameters():
            param.requires_grad_(trainable)
            count += param.numel()
    return count
