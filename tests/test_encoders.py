"""The Swin encoder equals MONAI's own ``SwinTransformer.forward`` for the same weights.

``SwinImageEncoder.forward`` walks MONAI's internals (patch embedding, stages,
``proj_out``) so that it can stop after ``n_outputs`` stages. These tests pin it to
MONAI's public forward: a MONAI upgrade that changes the network fails here.
"""

from __future__ import annotations

import pytest
import torch

from gazimed_lab.models.encoders import SwinImageEncoder

SMALL = dict(patch_size=(2, 2, 2), embed_dim=6, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2),
             window_size=(4, 4, 4))


def _encoder(img_size: tuple[int, int, int], n_outputs: int = 5, in_channels: int = 2,
             seed: int = 0) -> SwinImageEncoder:
    torch.manual_seed(seed)
    return SwinImageEncoder(in_channels, img_size, drop_path_rate=0.1, n_outputs=n_outputs,
                            **SMALL).eval()


@pytest.mark.parametrize("img_size", [(16, 16, 16), (13, 16, 11)])
def test_outputs_equal_monai_forward(img_size: tuple[int, int, int]) -> None:
    enc = _encoder(img_size)
    x = torch.randn(2, 2, *img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = enc(x)
        theirs = enc.swin(enc.pad(x), normalize=True)
    assert len(ours) == len(theirs) == 5
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape == (2, enc.stage_channels[i], *enc.stage_grids[i]), i
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), f"output {i} differs from MONAI"
    # Each output is layer-normalized over channels (MONAI's normalize=True).
    for a in ours:
        per_voxel = a.movedim(1, -1)
        assert per_voxel.mean(-1).abs().max() < 1e-4
        assert torch.allclose(per_voxel.var(-1, unbiased=False), torch.ones(()), atol=1e-2)


def test_padding_is_centred_edge_values() -> None:
    enc = _encoder((13, 16, 11))
    assert enc.padded_size == (14, 16, 12)
    assert enc.padding == ((0, 1), (0, 0), (0, 1))
    x = torch.randn(1, 2, 13, 16, 11)
    padded = enc.pad(x)
    assert padded.shape == (1, 2, 14, 16, 12)
    assert torch.equal(padded[:, :, :13, :, :11], x)
    assert torch.equal(padded[:, :, 13, :, :11], x[:, :, 12])  # replicated edge


@pytest.mark.parametrize("n_outputs", [1, 2, 4])
def test_fewer_outputs_equal_the_first_outputs_of_the_full_encoder(n_outputs: int) -> None:
    full = _encoder((13, 16, 11))
    short = _encoder((13, 16, 11), n_outputs=n_outputs, seed=99)
    missing, unexpected = short.load_state_dict(full.state_dict(), strict=False)
    assert not missing  # every kept weight comes from the full encoder
    # Only the stages deeper than the last output are left out (never built).
    stages = {k.split(".")[1] for k in unexpected}
    assert stages == {f"layers{s}" for s in range(n_outputs, 5)}
    x = torch.randn(1, 2, 13, 16, 11, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, reference = short(x), full.swin(full.pad(x), normalize=True)
    assert len(ours) == n_outputs
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_input_shape_is_checked() -> None:
    enc = _encoder((16, 16, 16))
    with pytest.raises(ValueError, match=r"encoder input must have shape \(B, 2, 16, 16, 16\), "
                       r"got \(1, 1, 16, 16, 16\)"):
        enc(torch.zeros(1, 1, 16, 16, 16))
