"""Building cmkit networks from a snapshot's recorded class names and arguments, and loading its tensors."""

import pytest
import torch

from builders import assert_reference_parity, reference_fixture
from cmkit.karras import sigma_to_timestep
from cmkit.models.dhariwal_unet import DhariwalUNet
from cmkit.models.edm2_unet import EDM2UNet
from cmkit.models.mlp import MLPNet
from cmkit.models.reference_nets import REFERENCE_NETWORKS, load_reference_state_dict
from cmkit.models.song_unet import SongUNet

FIXTURES = {"song_unet_ddpmpp": SongUNet, "song_unet_ncsnpp": SongUNet, "dhariwal_unet": DhariwalUNet,
            "edm2_unet": EDM2UNet}  # fmt: skip
PREFIX = {"EDMPrecond": "model.", "edm2.Precond": "unet."}


def output(net, t):
    kwargs = {"augment_labels": t["augment_labels"]} if "augment_labels" in t else {}
    with torch.no_grad():
        return net.eval()(t["x"], sigma_to_timestep(t["sigma"]), t["class_ids"], **kwargs).sample


def test_the_names():
    assert set(REFERENCE_NETWORKS) == {"SongUNet", "DhariwalUNet", "edm2.UNet", "EDMPrecond", "ECMPrecond",
                                       "edm2.Precond"}


@pytest.mark.parametrize("name", FIXTURES)
def test_network_by_its_class_name_with_its_own_tensors(name):
    meta, t, state = reference_fixture(name)
    prefix = PREFIX[meta["precond_class"]]
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # the network's tensors alone
    net = REFERENCE_NETWORKS[meta["reference_class"]](**meta["network_kwargs"])
    assert type(net) is FIXTURES[name]
    load_reference_state_dict(net, own)
    assert_reference_parity(output(net, t), t["output"])


@pytest.mark.parametrize("name", FIXTURES)
def test_wrapper_by_its_class_name_with_the_wrappers_tensors(name):
    meta, t, state = reference_fixture(name)
    net = REFERENCE_NETWORKS[meta["precond_class"]](**meta["precond_kwargs"])
    load_reference_state_dict(net, state)
    assert_reference_parity(output(net, t), t["output"])


def test_ects_wrapper_takes_edms_arguments():
    # locuslab/ect ECMPrecond: EDMPrecond's arguments (sigma_min 0.003 is the wrapper's) around EDM's SongUNet
    meta, t, state = reference_fixture("song_unet_ddpmpp")
    net = REFERENCE_NETWORKS["ECMPrecond"](**meta["precond_kwargs"], sigma_min=0.003, sigma_data=0.5)
    load_reference_state_dict(net, state)
    assert_reference_parity(output(net, t), t["output"])


def test_built_on_the_meta_device_the_tensors_are_assigned():
    meta, t, state = reference_fixture("song_unet_ddpmpp")
    with torch.device("meta"):
        net = REFERENCE_NETWORKS["EDMPrecond"](**meta["precond_kwargs"])
    load_reference_state_dict(net, state)
    assert not any(p.is_meta for p in net.parameters()) and not any(b.is_meta for b in net.buffers())
    assert_reference_parity(output(net, t), t["output"])


def test_mismatches_raise_and_name_the_keys():
    meta, _, state = reference_fixture("dhariwal_unet")
    net = REFERENCE_NETWORKS["EDMPrecond"](**meta["precond_kwargs"])
    with pytest.raises(ValueError, match=r"missing keys \(1\): out_conv.bias"):
        load_reference_state_dict(net, {k: v for k, v in state.items() if k != "model.out_conv.bias"})
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): extra"):
        load_reference_state_dict(net, {**{k[6:]: v for k, v in state.items()}, "extra": torch.zeros(1)})
    bad = dict(state, **{"model.out_conv.bias": torch.zeros(5)})
    with pytest.raises(ValueError, match="shape mismatches"):
        load_reference_state_dict(net, bad)
    with pytest.raises(TypeError, match="MLPNet"):
        load_reference_state_dict(MLPNet(), {})


def test_edm2_uncertainty_head_must_be_asked_for():
    meta, _, state = reference_fixture("edm2_unet")
    net = REFERENCE_NETWORKS["edm2.UNet"](**meta["network_kwargs"])
    with pytest.raises(ValueError, match="uncertainty head"):
        load_reference_state_dict(net, state)
    load_reference_state_dict(net, {k: v for k, v in state.items() if not k.startswith("logvar_")})
    with pytest.raises(ValueError, match="edm2.Precond"):
        REFERENCE_NETWORKS["edm2.UNet"](**meta["network_kwargs"], logvar_channels=8)


def test_unknown_arguments_and_model_types_raise():
    meta, _, _ = reference_fixture("song_unet_ddpmpp")
    with pytest.raises(ValueError, match=r"\['fancy'\].*not arguments of cmkit's SongUNet"):
        REFERENCE_NETWORKS["SongUNet"](**meta["network_kwargs"], fancy=1)
    with pytest.raises(ValueError, match="model_type 'VPUNet'"):
        REFERENCE_NETWORKS["EDMPrecond"](img_resolution=16, img_channels=3, model_type="VPUNet")
