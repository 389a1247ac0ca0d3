"""cmkit's LPIPS-VGG (training/lpips.py): parity with the lpips package, weight formats, metric properties, and a
CD step with loss=lpips. Weights are hashed (tests/lpips_fixture.py); inputs are small so VGG-16 stays cheap."""

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lpips_fixture import TAP_CHANNELS, VGG16_CONV_LAYERS, hashed_images, lpips_vgg_state_dict
from safetensors.torch import load_file, save_file

from cmkit.cli import main
from cmkit.training.losses import LPIPSDistance, make_distance
from cmkit.training.lpips import (
    LPIPS_SCALE,
    LPIPS_SHIFT,
    TAP_NAMES,
    VGG16_CONVS,
    LPIPSVGG16,
    load_lpips_vgg16,
    unit_normalize,
)

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "lpips" / "lpips_vgg_reference.safetensors"


@pytest.fixture(scope="module")
def state():
    return lpips_vgg_state_dict(seed=0)


@pytest.fixture(scope="module")
def lpips_file(state, tmp_path_factory):
    """The hashed weights saved as lpips documents it: torch.save(lpips.LPIPS(net='vgg').state_dict(), ...)."""
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def model(lpips_file):
    return load_lpips_vgg16(lpips_file)


def test_layout_is_vgg16_with_lpips_slices():
    assert tuple(VGG16_CONVS) == VGG16_CONV_LAYERS
    assert TAP_NAMES == ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
    assert LPIPS_SHIFT == (-0.030, -0.088, -0.188) and LPIPS_SCALE == (0.458, 0.448, 0.450)
    assert [h.numel() for h in LPIPSVGG16().heads] == list(TAP_CHANNELS)


def test_matches_the_lpips_package_on_the_stored_fixture(model):
    """tests/fixtures/lpips: lpips 0.1.4's output for the hashed weights (README there says how it was made)."""
    ref = load_file(str(FIXTURE))
    with torch.no_grad():
        per_layer = model.layer_distances(ref["x"], ref["y"])
        total = model(ref["x"], ref["y"])
    torch.testing.assert_close(per_layer, ref["per_layer"], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(total, ref["lpips"], rtol=1e-5, atol=1e-8)
    assert total.shape == (2,) and ref["lpips"][1] < 0.01 < ref["lpips"][0]  # a far and a near pair


def test_loads_torchvision_vgg16_plus_the_head_file(state, model, tmp_path):
    backbone = {re.sub(r"^net\.slice\d\.", "features.", k): v for k, v in state.items() if k.startswith("net.")}
    backbone["classifier.0.weight"] = torch.zeros(4, 3)  # torchvision's fully connected layers are ignored
    heads = {k: v for k, v in state.items() if k.startswith("lin")}
    save_file(backbone, str(tmp_path / "vgg16.safetensors"))
    torch.save(heads, tmp_path / "vgg.pth")
    # as `--option 'lpips_weights=["vgg16.safetensors", "vgg.pth"]'` passes them: a JSON list of strings
    files = [str(tmp_path / "vgg16.safetensors"), str(tmp_path / "vgg.pth")]
    two = make_distance("lpips", lpips_weights=files, lpips_resize=16)
    x, y = hashed_images((2, 3, 16, 16), 5), hashed_images((2, 3, 16, 16), 6)
    with torch.no_grad():
        torch.testing.assert_close(two(x, y), model(x, y), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"linear heads are missing.*vgg\.pth"):
        load_lpips_vgg16(tmp_path / "vgg16.safetensors")


def test_identity_symmetry_and_non_negativity(model):
    x, y = hashed_images((3, 3, 16, 24), 7), hashed_images((3, 3, 16, 24), 8)
    with torch.no_grad():
        assert torch.equal(model(x, x), torch.zeros(3))
        torch.testing.assert_close(model(x, y), model(y, x), rtol=1e-6, atol=0)
        per_layer = model.layer_distances(x, y)
    assert (per_layer > 0).all() and per_layer.shape == (5, 3)


def test_gradient_flows_to_the_input_only(model):
    x = hashed_images((2, 3, 16, 16), 9).requires_grad_(True)
    y = hashed_images((2, 3, 16, 16), 10)
    model(x, y).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_unit_normalize_has_a_finite_gradient_where_all_channels_vanish():
    f = torch.zeros(1, 4, 2, 2, requires_grad=True)
    unit_normalize(f).sum().backward()
    assert torch.isfinite(f.grad).all()
    naive = torch.zeros(1, 4, 2, 2, requires_grad=True)  # lpips' sqrt(sum F^2) form: NaN at a zero vector
    (naive / (naive.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)).sum().backward()
    assert torch.isnan(naive.grad).all()
    g = torch.tensor([[[[3.0]], [[4.0]]]])
    torch.testing.assert_close(unit_normalize(g), torch.tensor([[[[0.6]], [[0.8]]]]))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("net.slice3.12.weight"), r"missing 1 keys \['net\.slice3\.12\.weight'\]"),
        (lambda s: s.__setitem__("net.slice2.0.weight", s["net.slice1.0.weight"]), r"unexpected 1 keys \['net\.slice2\.0\.weight'\]"),
        (lambda s: s.__setitem__("foo.bar", torch.zeros(1)), r"unexpected 1 keys \['foo\.bar'\]"),
        (lambda s: s.__setitem__("net.slice1.0.bias", torch.zeros(65)), r"net\.slice1\.0\.bias has shape \(65,\), LPIPS-VGG needs \(64,\)"),
        (lambda s: s.update({k: -s[k] for k in ("lin2.model.1.weight", "lins.2.model.1.weight")}), r"lin2\.model\.1\.weight has negative"),
        (lambda s: s.__setitem__("lins.0.model.1.weight", s["lin0.model.1.weight"] * 2), r"lin0\.model\.1\.weight and lins\.0.* differ"),
    ],
)
def test_a_wrong_state_dict_is_a_clear_error(state, edit, message):
    broken = dict(state)
    edit(broken)
    with pytest.raises(ValueError, match=message):
        LPIPSVGG16().load_lpips_state_dict(broken, source="w.pt")


def test_lpips_distance_repeats_channels_resizes_and_refuses_bad_files(lpips_file, model, tmp_path):
    dist = make_distance("lpips", lpips_weights=lpips_file, lpips_resize=32)
    x, y = hashed_images((2, 1, 8, 8), 11), hashed_images((2, 1, 8, 8), 12)
    d = dist(x, y)
    assert d.shape == (2,)
    up = [F.interpolate(t.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear", align_corners=False) for t in (x, y)]
    with torch.no_grad():
        torch.testing.assert_close(d, model(*up), rtol=0, atol=0)
    # the default is OpenAI's 224x224: check the size VGG sees, stopping before the costly convolutions
    seen = []

    class Seen(Exception):
        pass

    def record(module, args):
        seen.append(tuple(args[0].shape))
        raise Seen

    default = LPIPSDistance(lpips_file)
    default.lpips.convs[0].register_forward_pre_hook(record)
    with pytest.raises(Seen):
        default(x, y)
    assert seen == [(2, 3, 224, 224)]
    torch.save({"other": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an LPIPS"):
        LPIPSDistance(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="lpips_resize must be an integer >= 16"):
        LPIPSDistance(lpips_file, resize=8)
    with pytest.raises(ValueError, match="at least 16x16"):
        model(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_needs_neither_torchvision_nor_the_lpips_package(lpips_file, monkeypatch):
    for name in ("lpips", "torchvision"):
        monkeypatch.setitem(sys.modules, name, None)  # any `import lpips` / `import torchvision` now fails
    dist = make_distance("lpips", lpips_weights=str(lpips_file), lpips_resize=16)
    assert dist(torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)).item() > 0


def test_cd_step_on_digits_with_loss_lpips(lpips_file, tmp_path, capsys):
    from builders import tiny_pipeline_dir

    teacher = tiny_pipeline_dir(tmp_path / "teacher", (1, 8, 8), 10, parameterization="edm")
    out = tmp_path / "cd"
    rc = main(["train", "--method", "cd", "--teacher", str(teacher), "--data", "digits", "--steps", "1",
               "--option", "loss=lpips", "--option", f"lpips_weights={lpips_file}", "--option", "lpips_resize=16",
               "--option", "num_scales=4", "--output", str(out), "--no-progress", "--num-samples", "4",
               "--batch-size", "4", "--seed", "1"])
    assert rc == 0, capsys.readouterr().err
    assert "trained cd for 1 steps" in capsys.readouterr().out
    options = json.loads((out / "train_config.json").read_text())["objective_options"]
    assert options["loss"] == "lpips" and options["lpips_resize"] == 16
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["step"] == 1 and math.isfinite(metrics["loss"]) and 0 < metrics["grad_norm"] < math.inf
