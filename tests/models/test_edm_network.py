"""The EDM-family networks' shared conventions: inputs converted on the sample's device, on any accelerator."""

import pytest
import torch
from device_rules import SIMULATED, AcceleratorRules

from cmkit.karras import sigma_to_timestep
from cmkit.models.dhariwal_unet import DhariwalUNet
from cmkit.models.edm2_unet import EDM2UNet
from cmkit.models.song_unet import SongUNet

ACCELERATORS = [
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
    pytest.param("mps", marks=pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no MPS device")),
]
SMALL = dict(img_resolution=16, label_dim=10, model_channels=16, channel_mult=[1, 2], num_blocks=1, dropout=0.1)
NETWORKS = {
    "ddpmpp": lambda: SongUNet(in_channels=3, out_channels=3, augment_dim=9, attn_resolutions=[8], label_dropout=0.2,
                               **SMALL),
    "ncsnpp": lambda: SongUNet(in_channels=3, out_channels=3, attn_resolutions=[8], embedding_type="fourier",
                               encoder_type="residual", decoder_type="skip", resample_filter=[1, 3, 3, 1], **SMALL),
    "adm": lambda: DhariwalUNet(in_channels=3, out_channels=3, augment_dim=9, attn_resolutions=[8], label_dropout=0.2,
                                **{**SMALL, "model_channels": 32}),
    "edm2": lambda: EDM2UNet(img_channels=3, attn_resolutions=[8], channels_per_head=16, logvar_channels=8, **SMALL),
}  # fmt: skip


def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g)
    return x, sigma_to_timestep(torch.tensor([0.3, 20.0])), torch.tensor([3, 7])  # labels and timesteps on the CPU


@pytest.mark.parametrize("name", NETWORKS)
def test_training_step_is_device_clean_on_a_simulated_accelerator(name):
    torch.manual_seed(0)
    net = NETWORKS[name]().train().to(SIMULATED)
    x, timestep, labels = inputs()
    with AcceleratorRules(mps=True):
        out = net(x.to(SIMULATED), timestep, class_labels=labels).sample
        out.square().mean().backward()
        if isinstance(net, EDM2UNet):
            assert net.logvar(timestep).device == SIMULATED
    assert out.device == SIMULATED and out.shape == x.shape
    used = [p for n, p in net.named_parameters() if not n.startswith("logvar_")]  # the head is not in the output
    assert all(p.grad is not None and p.grad.device == SIMULATED for p in used)


@pytest.mark.parametrize("device", ACCELERATORS)
@pytest.mark.parametrize("name", NETWORKS)
def test_outputs_match_the_cpu(name, device):
    torch.manual_seed(0)
    net = NETWORKS[name]().eval()
    x, timestep, labels = inputs()
    with torch.no_grad():
        reference = net(x, timestep, class_labels=labels).sample
        out = net.to(device)(x.to(device), timestep, class_labels=labels).sample
    assert out.device.type == device
    torch.testing.assert_close(out.cpu(), reference, rtol=1e-2, atol=1e-2 * float(reference.abs().max()))
