"""CPU capability detection, ``--dtype auto``, and the fallbacks on CPUs without native bfloat16.

The subprocess tests cap the instruction sets with oneDNN's ``ONEDNN_MAX_CPU_ISA``, ATen's ``ATEN_CPU_CAPABILITY``
and MKL's ``MKL_ENABLE_INSTRUCTIONS``, so every machine checks the AVX2-only path (no bf16 weight packing, float32 by
default) as well as its own.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmkit import hardware
from cmkit.hardware import cpu_info, fastest_dtype, onednn_isa_rank, resolve_dtype
from cmkit.models import prepack

ROOT = Path(__file__).resolve().parents[1]
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
X86 = cpu_info().aten_capability in ("AVX2", "AVX512")

# Run in a child: the CPU facts, which dtype `auto` picks, and a bf16 + fp32 UNet forward through the packed-
# convolution entry point against the plain op, on fixed weights and inputs (saved for the parent to compare).
PROBE = r"""
import json, sys, torch
from cmkit.hardware import cpu_info, fastest_dtype
from cmkit.models import prepack
from cmkit.models.presets import unet_preset
info = cpu_info()
torch.manual_seed(0)
net = unet_preset("tiny", sample_size=8, in_channels=1, out_channels=1).eval()
x = torch.randn(2, 1, 8, 8)
t = torch.tensor([3.0, 40.0])
out = {}
with torch.no_grad():
    for dtype in (torch.float32, torch.bfloat16):
        model = net.to(dtype)
        y = model(x.to(dtype), t).sample.float()
        packable = set(prepack._PACKABLE)
        prepack._PACKABLE.clear()  # the plain op everywhere, for reference
        y_plain = model(x.to(dtype), t).sample.float()
        prepack._PACKABLE.update(packable)
        out[str(dtype)] = y.tolist()
        out[str(dtype) + "_vs_plain"] = float((y - y_plain).abs().max())
json.dump({"info": info.__dict__, "auto": str(fastest_dtype("cpu")),
           "packs_bf16": prepack.packs(torch.bfloat16), "packs_fp32": prepack.packs(torch.float32), "out": out},
          open(sys.argv[1], "w"))
"""


def _probe(tmp_path, name, env):
    path = tmp_path / f"{name}.json"
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-c", PROBE, str(path)], env=full_env, check=True, timeout=120)
    return json.loads(path.read_text())


def test_isa_names_are_ordered():
    assert onednn_isa_rank("avx2") < onednn_isa_rank("AVX512_CORE") < onednn_isa_rank(hardware.NATIVE_BF16_ISA)
    assert onednn_isa_rank("AVX10_1_512_AMX") == onednn_isa_rank("AVX512_CORE_AMX") < onednn_isa_rank("ALL")
    assert onednn_isa_rank("no-such-isa") is None


def test_cpu_info_is_consistent():
    info = cpu_info()
    assert info.model_name and info.threads == torch.get_num_threads()
    assert info.model_name in info.describe() and info.aten_capability in info.describe()
    assert not info.native_bf16 or info.onednn_bf16  # native bf16 implies oneDNN runs its bf16 kernels
    if info.onednn_bf16 and info.avx512_bf16 and not info.native_bf16:
        assert "without AMX" in info.describe()
    if not info.onednn_bf16:
        assert "emulated" in info.describe()
    assert prepack.packs(torch.bfloat16) == (info.onednn_bf16 and prepack._AVAILABLE)
    assert not prepack.packs(torch.float16)


def test_auto_dtype_is_bf16_only_where_native():
    assert fastest_dtype("cpu") == (torch.bfloat16 if cpu_info().native_bf16 else torch.float32)
    assert resolve_dtype("auto", "cpu") == fastest_dtype("cpu")
    assert resolve_dtype("bfloat16") == torch.bfloat16 and resolve_dtype(torch.float16) == torch.float16
    assert resolve_dtype("half") == torch.float16
    for bad in ("int8", "banana"):
        with pytest.raises(ValueError, match="'auto' or a floating torch dtype name"):
            resolve_dtype(bad)


@pytest.mark.skipif(not X86 or not prepack._AVAILABLE, reason="the ISA caps are x86 oneDNN's")
def test_avx2_cap_takes_the_fallback_and_matches(tmp_path):
    capped = _probe(tmp_path, "avx2", AVX2_ONLY)
    assert capped["info"]["aten_capability"] == "AVX2"
    assert capped["info"]["onednn_isa_cap"] == "AVX2"
    assert not capped["info"]["native_bf16"] and not capped["info"]["onednn_bf16"]
    assert capped["auto"] == "torch.float32"
    assert not capped["packs_bf16"] and capped["packs_fp32"]  # bf16 convolutions take the plain op
    assert capped["out"]["torch.bfloat16_vs_plain"] == 0.0  # ... so they are the plain op, bit for bit
    assert capped["out"]["torch.float32_vs_plain"] <= 1e-5
    full = _probe(tmp_path, "full", {})
    assert full["info"]["native_bf16"] == cpu_info().native_bf16 and full["packs_bf16"] == prepack.packs(torch.bfloat16)
    for dtype, tol in (("torch.float32", 1e-4), ("torch.bfloat16", 0.1)):  # other kernels, same network
        diff = (torch.tensor(capped["out"][dtype]) - torch.tensor(full["out"][dtype])).abs().max()
        assert float(diff) <= tol, (dtype, float(diff))


@pytest.mark.skipif(not cpu_info().onednn_bf16, reason="needs a CPU where oneDNN runs bf16 (AVX-512 or AVX-NE-CONVERT)")
def test_a_cap_below_amx_picks_float32(tmp_path):
    capped = _probe(tmp_path, "avx512core", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})
    assert capped["info"]["onednn_bf16"] and not capped["info"]["native_bf16"]  # bf16 runs, but emulated
    assert capped["auto"] == "torch.float32" and capped["packs_bf16"]


@pytest.mark.skipif(not X86 or not prepack._AVAILABLE, reason="the ISA caps are x86 oneDNN's")
def test_bfloat16_suite_passes_with_the_isa_capped():
    # the tests that exercise bf16 networks, run as an AVX2-only machine would run them
    selected = [
        "tests/models/test_prepack.py",
        "tests/models/test_unet.py",
        "tests/editing/test_pipeline_edits.py::test_bfloat16_model_and_batched_class_labels",
        "tests/test_pipeline_parity.py::test_bfloat16_one_step_error_no_worse_than_diffusers",
        "tests/test_pipeline_parity.py::test_bfloat16_pipeline_keeps_float32_noise_and_state",
        "tests/models/test_mlp.py::test_runs_in_bfloat16_close_to_float32",
    ]
    env = {**os.environ, **AVX2_ONLY, "PYTHONPATH": str(ROOT / "src")}
    env.pop("PYTEST_XDIST_WORKER", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *selected]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_cli_dtype_auto_is_the_default_and_reported(tmp_path, capsys):
    from cmkit.cli import main

    assert main(["sample", "--batch-size", "2", "--out", str(tmp_path / "s.png")]) == 0
    expected = str(fastest_dtype("cpu")).removeprefix("torch.")
    assert f"in {expected} (auto) on cpu" in capsys.readouterr().out
    assert main(["sample", "--batch-size", "2", "--dtype", "float32", "--out", str(tmp_path / "s.png")]) == 0
    assert "in float32 on cpu" in capsys.readouterr().out


@pytest.mark.skipif(not X86 or not prepack._AVAILABLE, reason="the ISA caps are x86 oneDNN's")
def test_cli_picks_float32_on_an_avx2_only_cpu(tmp_path):
    env = {**os.environ, **AVX2_ONLY, "PYTHONPATH": str(ROOT / "src")}
    for cmd in (["sample", "--batch-size", "2", "--out", str(tmp_path / "s.png")], ["demo", "--per-class", "1", "--out", str(tmp_path / "d.png")]):
        done = subprocess.run([sys.executable, "-m", "cmkit", *cmd], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "float32 (auto)" in done.stdout
