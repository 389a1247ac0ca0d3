"""EDM / EDM2 / ECT snapshots as cmkit denoisers: which preconditioner maps to which parameterization, with which
sigma_data / sigma_min, which network with which weights; and the outputs match the preconditioners' formulas.

The snapshots are written in those projects' pickle format by ``tests/edm_snapshots.py``. cmkit's reference
networks (``cmkit.models.reference_nets``) are passed in as a table; here the table maps the recorded network name
to cmkit's ``MLPNet``, whose weights the test snapshot holds, so the preconditioning is checked end to end.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

import cmkit.convert.edm as edm
from cmkit.convert.edm import build_edm_denoiser, convert_edm_snapshot, describe_edm_network, load_edm_denoiser
from cmkit.io.snapshot_pickle import SnapshotError, read_network_pickle
from cmkit.models.denoiser import Denoiser, call_network
from cmkit.models.mlp import MLPNet
from cmkit.models.modeling import load_exact_state_dict
from cmkit.training.build import load_teacher
from edm_snapshots import (
    EDM2_KWARGS,
    SONG_KWARGS,
    EDM2UNetLike,
    SongUNetLike,
    edm2_snapshot_data,
    edm_snapshot_data,
    reference_state_dict,
    write_pickle,
)

class CallsOnLoadPayload:
    """Pickles as ``os.system("touch marker")``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


MLP_KWARGS = dict(sample_shape=(2,), width=16, num_blocks=1, embedding_dim=8)
NETWORKS = {"SongUNet": MLPNet, "DhariwalUNet": MLPNet, "edm2.UNet": MLPNet}


@pytest.fixture
def mlp():
    torch.manual_seed(7)
    return MLPNet(**MLP_KWARGS).eval()


def mlp_snapshot(tmp_path, mlp, **kw):
    path = tmp_path / "network-snapshot.pkl"
    write_pickle(path, edm_snapshot_data(mlp, inner_kwargs=MLP_KWARGS, **kw))
    return path


def edm_formula(F, x, sigma, sigma_data):
    """EDM table 1 ("ours"), with F called the cmkit way (timestep 250 ln sigma = 1000 c_noise)."""
    s = sigma[:, None]
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    c_out = s * sigma_data / (s**2 + sigma_data**2).sqrt()
    c_in = 1 / (s**2 + sigma_data**2).sqrt()
    return c_skip * x + c_out * call_network(F, c_in * x, 1000 * sigma.log() / 4, None)


def ecm_formula(F, x, sigma, sigma_data, eps):
    """ECT's ECMPrecond in eval mode (CM appendix C): the boundary shifted by eps = sigma_min."""
    s = sigma[:, None]
    c_skip = sigma_data**2 / ((s - eps) ** 2 + sigma_data**2)
    c_out = (s - eps) * sigma_data / (s**2 + sigma_data**2).sqrt()
    c_in = 1 / (s**2 + sigma_data**2).sqrt()
    return c_skip * x + c_out * call_network(F, c_in * x, 1000 * sigma.log() / 4, None)


X = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
SIGMA = torch.tensor([0.004, 0.05, 0.7, 3.0, 80.0])


# ------------------------------------------------------------------------------------------- describing


def test_an_edm_snapshot_is_an_edm_denoiser_with_its_recorded_sigma_data(tmp_path):
    torch.manual_seed(0)
    song = SongUNetLike()
    write_pickle(tmp_path / "s.pkl", edm_snapshot_data(song, sigma_data=0.7))
    network = describe_edm_network(read_network_pickle(tmp_path / "s.pkl"))
    assert (network.preconditioner, network.parameterization, network.network) == ("EDMPrecond", "edm", "SongUNet")
    assert network.sigma_data == 0.7 and network.label_dim == 0 and network.dropped == ()
    assert network.network_kwargs == SONG_KWARGS
    assert list(network.state_dict) == list(reference_state_dict(song))


def test_an_edm2_snapshot_maps_to_the_edm2_unet_and_drops_the_uncertainty_head(tmp_path):
    torch.manual_seed(0)
    write_pickle(tmp_path / "s.pkl", edm2_snapshot_data(EDM2UNetLike(), sigma_data=0.5))
    network = describe_edm_network(read_network_pickle(tmp_path / "s.pkl"))
    assert (network.preconditioner, network.parameterization, network.network) == ("Precond", "edm", "edm2.UNet")
    assert network.network_kwargs == EDM2_KWARGS and network.label_dim == 10
    assert network.dropped == ("logvar_fourier.freqs", "logvar_linear.weight")
    assert "out_gain" in network.state_dict and network.state_dict["out_gain"].dtype == torch.float16


def test_an_ect_snapshot_is_a_consistency_model_with_its_recorded_sigma_min(tmp_path, mlp):
    path = mlp_snapshot(tmp_path, mlp, precond="ECMPrecond", extra_precond={"sigma_min": 0.003})
    network = describe_edm_network(read_network_pickle(path))
    assert (network.parameterization, network.sigma_min, network.sigma_data) == ("consistency", 0.003, 0.5)


@pytest.mark.parametrize("precond, differs", [("VPPrecond", "VP time"), ("VEPrecond", r"ln\(sigma / 2\)"),
                                              ("iDDPMPrecond", "discrete noise levels")])  # fmt: skip
def test_the_baseline_preconditioners_are_refused_with_what_differs(tmp_path, mlp, precond, differs):
    path = mlp_snapshot(tmp_path, mlp, precond=precond)
    expected = rf"holds a {precond}, whose preconditioning cmkit does not implement.*{differs}"
    with pytest.raises(SnapshotError, match=expected):
        describe_edm_network(read_network_pickle(path))


def test_unknown_preconditioners_and_networks_are_refused(tmp_path, mlp):
    with pytest.raises(SnapshotError, match="holds a MyPrecond, not a preconditioner cmkit knows"):
        describe_edm_network(read_network_pickle(mlp_snapshot(tmp_path, mlp, precond="MyPrecond")))
    with pytest.raises(SnapshotError, match="wraps a MyUNet; cmkit rebuilds only SongUNet, DhariwalUNet"):
        describe_edm_network(read_network_pickle(mlp_snapshot(tmp_path, mlp, inner_name="MyUNet")))


def test_a_recorded_sigma_data_must_be_positive(tmp_path, mlp):
    with pytest.raises(ValueError, match="EDMPrecond.sigma_data must be a positive"):
        describe_edm_network(read_network_pickle(mlp_snapshot(tmp_path, mlp, sigma_data=-1.0)))


# ------------------------------------------------------------------------------------------- building


def test_the_built_edm_denoiser_matches_edm_preconditioning(tmp_path, mlp):
    denoiser = load_edm_denoiser(mlp_snapshot(tmp_path, mlp, sigma_data=0.7), networks=NETWORKS,
                                 load_state_dict=load_exact_state_dict)  # fmt: skip
    assert (denoiser.parameterization, denoiser.sigma_data) == ("edm", 0.7)
    assert not denoiser.training
    with torch.no_grad():
        torch.testing.assert_close(denoiser(X, SIGMA), edm_formula(mlp, X, SIGMA, 0.7), rtol=1e-5, atol=1e-5)


def test_the_built_ect_denoiser_matches_the_shifted_consistency_boundary(tmp_path, mlp):
    path = mlp_snapshot(tmp_path, mlp, precond="ECMPrecond", extra_precond={"sigma_min": 0.003})
    denoiser = load_edm_denoiser(path, networks=NETWORKS, load_state_dict=load_exact_state_dict)
    with torch.no_grad():
        torch.testing.assert_close(denoiser(X, SIGMA), ecm_formula(mlp, X, SIGMA, 0.5, 0.003), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(denoiser(X, torch.full((5,), 0.003)), X)  # f(x, eps) = x


def test_arguments_the_reference_network_does_not_take_are_a_clear_error(tmp_path, mlp):
    path = tmp_path / "s.pkl"
    write_pickle(path, edm_snapshot_data(mlp, inner_kwargs={**MLP_KWARGS, "dropout_res": 16}))
    with pytest.raises(SnapshotError, match="does not take the snapshot's recorded arguments.*dropout_res"):
        load_edm_denoiser(path, networks=NETWORKS, load_state_dict=load_exact_state_dict)


@pytest.mark.parametrize("recorded, rebuilt", [(4.0, 4.0), (0.0, None), (None, None)])
def test_an_ect_imagenet_snapshot_recording_dropout_res_loads_into_the_edm2_unet(tmp_path, recorded, rebuilt):
    """ECT's ImageNet snapshots: EDM2's Precond without its uncertainty head, around EDM2's UNet with ECT's extra
    ``dropout_res`` (recorded as its click option gives it: a float, or 0 / None for no restriction)."""
    from cmkit.models.edm2_unet import EDM2UNet

    kwargs = dict(img_resolution=8, img_channels=4, label_dim=10, model_channels=8, channel_mult=[1, 2],
                  num_blocks=1, attn_resolutions=[4], channels_per_head=8, dropout=0.5, dropout_res=recorded)
    torch.manual_seed(3)
    unet = EDM2UNet(**{**kwargs, "dropout_res": rebuilt})
    with torch.no_grad():
        for p in unet.parameters():  # the zero-initialised gains too, so the output depends on every weight
            p.add_(0.1 * torch.randn_like(p))
    write_pickle(tmp_path / "ect.pkl", edm2_snapshot_data(unet, inner_kwargs=kwargs, dtype=torch.float32,
                                                         uncertainty_head=False))  # fmt: skip
    denoiser = load_edm_denoiser(tmp_path / "ect.pkl")
    net = denoiser.net
    assert isinstance(net, EDM2UNet) and net.config["dropout_res"] == rebuilt
    drops = {name: m.drop.p for name, m in net.named_modules() if hasattr(m, "drop")}
    assert drops == {name: 0.5 if rebuilt is None or name.startswith(("enc.4x4", "dec.4x4")) else 0.0
                     for name in drops}  # fmt: skip
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma, labels = torch.tensor([0.3, 20.0]), torch.eye(10)[:2]
    with torch.no_grad():
        torch.testing.assert_close(denoiser(x, sigma, labels), Denoiser(unet.eval(), "edm")(x, sigma, labels),
                                   rtol=0, atol=0)  # fmt: skip


def test_convert_writes_a_teacher_directory_that_load_teacher_reads_back(tmp_path, mlp):
    path = mlp_snapshot(tmp_path, mlp, sigma_data=0.7)
    out = convert_edm_snapshot(path, tmp_path / "teacher", num_train_timesteps=18, networks=NETWORKS,
                               load_state_dict=load_exact_state_dict)  # fmt: skip
    assert json.loads((out / "model_index.json").read_text())["cmkit_parameterization"] == "edm"
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["num_train_timesteps"], scheduler["sigma_data"]) == (18, 0.7)
    teacher = load_teacher(out)
    with torch.no_grad():
        torch.testing.assert_close(teacher(X, SIGMA), edm_formula(mlp, X, SIGMA, 0.7), rtol=1e-5, atol=1e-5)


def test_load_teacher_reads_a_snapshot_file_directly(tmp_path, mlp, monkeypatch):
    monkeypatch.setattr(edm, "reference_networks", lambda: (NETWORKS, load_exact_state_dict))
    teacher = load_teacher(mlp_snapshot(tmp_path, mlp, sigma_data=0.7))
    assert teacher.parameterization == "edm" and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        torch.testing.assert_close(teacher(X, SIGMA), edm_formula(mlp, X, SIGMA, 0.7), rtol=1e-5, atol=1e-5)
    ect = mlp_snapshot(tmp_path, mlp, precond="ECMPrecond", extra_precond={"sigma_min": 0.003})
    with pytest.raises(ValueError, match="is a consistency model, not an EDM denoiser"):
        load_teacher(ect)


def test_float16_weights_are_loaded_into_a_float32_network(tmp_path):
    torch.manual_seed(2)
    mlp = MLPNet(**MLP_KWARGS).eval()
    path = tmp_path / "s.pkl"
    data = edm2_snapshot_data(mlp, inner_kwargs=MLP_KWARGS)
    write_pickle(path, data)
    denoiser = load_edm_denoiser(path, networks=NETWORKS, load_state_dict=load_exact_state_dict)
    expected = MLPNet(**MLP_KWARGS).eval()
    expected.load_state_dict({k: v.half().float() for k, v in mlp.state_dict().items()})
    assert next(denoiser.net.parameters()).dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(denoiser(X, SIGMA), edm_formula(expected, X, SIGMA, 0.5), rtol=1e-5, atol=1e-5)
    assert math.isclose(denoiser.sigma_data, 0.5)


def test_cli_converts_a_snapshot_and_refuses_openai_options_and_unsafe_files(tmp_path, mlp, monkeypatch, capsys):
    from cmkit.cli import main

    monkeypatch.setattr(edm, "reference_networks", lambda: (NETWORKS, load_exact_state_dict))
    path = mlp_snapshot(tmp_path, mlp, sigma_data=0.7)
    assert main(["convert", "--checkpoint", str(path), "--out", str(tmp_path / "pipe")]) == 0
    assert "wrote" in capsys.readouterr().out
    scheduler = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["num_train_timesteps"] == 40 and scheduler["sigma_data"] == 0.7
    assert main(["convert", "--checkpoint", str(path), "--out", str(tmp_path / "p2"), "--preset", "imagenet64"]) == 1
    assert "--preset describe an OpenAI checkpoint" in capsys.readouterr().err
    evil = edm_snapshot_data(mlp, inner_kwargs=MLP_KWARGS)
    evil["augment_pipe"] = CallsOnLoadPayload(str(tmp_path / "pwned"))
    write_pickle(tmp_path / "evil.pkl", evil)
    assert main(["convert", "--checkpoint", str(tmp_path / "evil.pkl"), "--out", str(tmp_path / "p3")]) == 1
    assert f"global {os.system.__module__}.system" in capsys.readouterr().err and not (tmp_path / "pwned").exists()
    torch.save(mlp.state_dict(), tmp_path / "openai.pt")
    assert main(["convert", "--checkpoint", str(tmp_path / "openai.pt"), "--out", str(tmp_path / "p4")]) == 1
    assert "--scheduler is required for an OpenAI checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["song_unet_ddpmpp", "song_unet_ncsnpp"])
def test_snapshot_of_a_real_edm_network_reproduces_edms_denoiser(tmp_path, name):
    """A snapshot pickled in EDM's format around cmkit's own SongUNet (loaded with the reference fixture's weights)
    reads back, through the restricted unpickler and ``REFERENCE_NETWORKS``, into a Denoiser that reproduces the
    output EDM's own EDMPrecond computed for the fixture."""
    from builders import assert_reference_parity, reference_fixture
    from cmkit.models.reference_nets import load_reference_state_dict
    from cmkit.models.song_unet import SongUNet

    meta, tensors, state = reference_fixture(name)
    inner = SongUNet(**meta["network_kwargs"])
    load_reference_state_dict(inner, state)
    kwargs = meta["network_kwargs"]
    data = edm_snapshot_data(inner, inner_kwargs=kwargs, label_dim=kwargs["label_dim"])
    path = tmp_path / "network-snapshot.pkl"
    write_pickle(path, data)
    denoiser = load_edm_denoiser(path)
    assert type(denoiser.net).__name__ == "SongUNet" and denoiser.parameterization == "edm"
    with torch.no_grad():
        out = denoiser(tensors["x"], tensors["sigma"], tensors["class_ids"])
    assert_reference_parity(out, tensors["denoised"])
