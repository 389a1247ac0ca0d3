"""The safe reader of EDM / EDM2 / ECT network snapshots: it reads their format, and runs nothing from a file.

The snapshots are written by ``tests/edm_snapshots.py`` in those projects' pickle format (persistent objects with
their module source, torch containers, tensors pickled by torch itself, numpy attributes, ``dnnlib.util.EasyDict``).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
from collections import OrderedDict

import numpy as np
import pytest
import torch

import cmkit.limits
from cmkit.io.pickled_arrays import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION
from cmkit.io.snapshot_pickle import ALLOWED_GLOBALS, RecordedObject, SnapshotError, read_network_pickle
from edm_snapshots import (
    EDM2_KWARGS,
    RAW_STD,
    SONG_KWARGS,
    EDM2UNetLike,
    Persisted,
    SongUNetLike,
    edm2_snapshot_data,
    edm_snapshot_data,
    fake_modules,
    model_kwargs,
    reference_state_dict,
    write_pickle,
)


def assert_same_tensors(ours, expected):
    assert list(ours) == list(expected)
    for key, value in expected.items():
        assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
        assert torch.equal(ours[key], value), key


@pytest.fixture
def song():
    torch.manual_seed(3)
    return SongUNetLike()


# ------------------------------------------------------------------------------------------- the formats


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reads_an_edm_snapshot(tmp_path, song, protocol):
    path = tmp_path / "network-snapshot-000100.pkl"
    write_pickle(path, edm_snapshot_data(song), protocol=protocol)
    snapshot = read_network_pickle(path)
    assert set(snapshot.entries) == {"ema", "loss_fn", "augment_pipe", "dataset_kwargs"}
    assert snapshot.entries["dataset_kwargs"]["path"] == "cifar10-32x32.zip"
    ema = snapshot.network()
    assert (ema.class_name, ema.module, ema.init_args) == ("EDMPrecond", None, ())
    recorded = dict(img_resolution=8, img_channels=3, label_dim=0, model_type="SongUNet", **model_kwargs(SONG_KWARGS))
    assert ema.init_kwargs == recorded
    assert ema.attributes["sigma_data"] == 0.5 and ema.attributes["sigma_max"] == float("inf")
    assert "training" not in ema.attributes and not any("hook" in k for k in ema.attributes)
    # the flat state dict is nn.Module.state_dict's, dtypes and order included; non-persistent buffers are left out
    assert_same_tensors(ema.state_dict, reference_state_dict(song, "model."))
    assert not any(k.endswith("scratch") for k in ema.state_dict)
    inner = ema.child("model")
    assert inner.class_name == "SongUNet" and inner.init_kwargs == SONG_KWARGS
    assert_same_tensors(inner.state_dict, reference_state_dict(song))
    enc = inner.child("enc")
    assert (enc.class_name, enc.module, enc.init_kwargs) == ("ModuleDict", "torch.nn.modules.container", None)
    block = inner.child("enc.8x8_block0")
    assert block.children["skip"] is not None and block.child("norm0").class_name == "GroupNorm"
    assert isinstance(block.attributes["skip_scale"], np.floating) and block.attributes["skip_scale"] == np.sqrt(0.5)
    assert snapshot.entries["loss_fn"].attributes == dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5)
    assert snapshot.entries["loss_fn"].state_dict == {}


def test_reads_an_edm2_snapshot_with_float16_weights_and_numpy_attributes(tmp_path):
    torch.manual_seed(4)
    unet = EDM2UNetLike()
    path = tmp_path / "network-snapshot-0671088-0.100.pkl"
    data = edm2_snapshot_data(unet)
    write_pickle(path, data)
    snapshot = read_network_pickle(path)
    assert set(snapshot.entries) == {"encoder", "dataset_kwargs", "loss_fn", "ema"}
    assert type(snapshot.entries["dataset_kwargs"]) is dict  # the EasyDict becomes a plain dict
    ema = snapshot.network()
    assert ema.class_name == "Precond" and set(ema.children) == {"unet", "logvar_fourier", "logvar_linear"}
    assert_same_tensors(ema.child("unet").state_dict, reference_state_dict(unet, dtype=torch.float16))
    assert ema.state_dict["unet.out_gain"].shape == () and ema.state_dict["logvar_fourier.freqs"].shape == (16,)
    assert ema.child("unet").init_kwargs == EDM2_KWARGS
    encoder = snapshot.entries["encoder"]
    expected_scale = np.float32(0.5) / np.array(RAW_STD, np.float32)
    assert encoder.attributes["scale"].dtype == np.float32
    np.testing.assert_array_equal(encoder.attributes["scale"], expected_scale)
    assert encoder.attributes["_vae"] is None


def test_reading_imports_nothing_named_in_the_file(tmp_path, song):
    path = tmp_path / "snap.pkl"
    write_pickle(path, edm2_snapshot_data())
    assert not {"torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"} & set(sys.modules)
    read_network_pickle(path)
    assert not {"torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"} & set(sys.modules)


def test_a_shared_submodule_is_recorded_once_and_keeps_both_names(tmp_path):
    torch.manual_seed(5)
    song = SongUNetLike()
    song.dec["8x8_twin"] = song.enc["8x8_conv"]  # one module under two names, as nn.Module allows
    write_pickle(tmp_path / "s.pkl", edm_snapshot_data(song))
    inner = read_network_pickle(tmp_path / "s.pkl").network().child("model")
    assert inner.child("dec.8x8_twin") is inner.child("enc.8x8_conv")
    assert_same_tensors(inner.state_dict, reference_state_dict(song))


def test_network_names_the_entries_when_the_key_is_missing(tmp_path):
    write_pickle(tmp_path / "s.pkl", {"dataset_kwargs": {"path": "x"}})
    with pytest.raises(SnapshotError, match=r"no network under 'ema'.*dataset_kwargs \(dict\)"):
        read_network_pickle(tmp_path / "s.pkl").network()


# ------------------------------------------------------------------------------------- nothing is executed


def exec_source_persistence(meta):
    """What torch_utils.persistence does on load: ``exec`` the recorded module source."""
    namespace = {}
    exec(meta["module_src"], namespace)  # noqa: S102 - the control case: an unrestricted loader runs the payload
    return namespace


def test_the_recorded_module_source_is_kept_as_text_and_never_run(tmp_path, song):
    marker = tmp_path / "pwned"
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    path = tmp_path / "evil.pkl"
    write_pickle(path, edm_snapshot_data(song, source=payload))
    ema = read_network_pickle(path).network()
    assert not marker.exists()
    assert ema.source == payload and ema.child("model").source == payload
    assert len(ema.source_sha256) == 64
    # control: the payload is live; the loader those projects use would have run it
    with fake_modules({"torch_utils.persistence": {"_reconstruct_persistent_obj": exec_source_persistence}}):
        with open(path, "rb") as f:
            pickle.load(f)
    assert marker.read_text() == "ran"


class CallsOnLoad:
    """Pickles as ``func(*args)``, the classic pickle payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    "make_payload, global_name",
    [
        (lambda m: CallsOnLoad(os.system, f"touch {m}"), f"{os.system.__module__}.system"),
        (lambda m: CallsOnLoad(eval, f"open({str(m)!r}, 'w')"), "builtins.eval"),
        (lambda m: CallsOnLoad(subprocess.call, ["touch", str(m)]), "subprocess.call"),
        (lambda m: CallsOnLoad(torch.load, str(m)), "torch.serialization.load"),
    ],
    ids=["os.system", "eval", "subprocess", "torch.load"],
)
def test_a_global_outside_the_allowlist_is_refused_by_name_and_never_called(tmp_path, song, make_payload, global_name):
    marker = tmp_path / "pwned"
    data = edm_snapshot_data(song)
    data["augment_pipe"] = make_payload(marker)
    write_pickle(tmp_path / "evil.pkl", data)
    with pytest.raises(SnapshotError, match=rf"global {global_name}\b.*not a recognised snapshot"):
        read_network_pickle(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_a_payload_inside_a_tensor_storage_is_refused(tmp_path):
    """``torch.storage._load_from_bytes`` would ``torch.load(weights_only=False)`` its bytes; cmkit parses them."""
    marker = tmp_path / "pwned"
    blob = b"".join(
        pickle.dumps(part, protocol=2)
        for part in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, {"little_endian": True},
                     CallsOnLoad(os.system, f"touch {marker}"), ["0"])  # fmt: skip
    )
    write_pickle(tmp_path / "evil.pkl", {"ema": CallsOnLoad(torch.storage._load_from_bytes, blob)})
    with pytest.raises(SnapshotError, match=r"tensor storage names the global .*system"):
        read_network_pickle(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_a_stand_in_cannot_be_given_state_by_the_pickle(tmp_path):
    """``BUILD`` on an allowed global would set attributes of cmkit's stand-in, for every later file."""
    rebuild = ALLOWED_GLOBALS[("torch._utils", "_rebuild_tensor_v2")]
    # GLOBAL torch._utils._rebuild_tensor_v2; EMPTY_DICT; 'qualified_name' -> 'x'; SETITEM; BUILD; STOP
    evil = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x0e\x00\x00\x00qualified_nameX\x01\x00\x00\x00xsb."
    (tmp_path / "evil.pkl").write_bytes(evil)
    with pytest.raises(SnapshotError, match="state to the function torch._utils._rebuild_tensor_v2"):
        read_network_pickle(tmp_path / "evil.pkl")
    assert rebuild.qualified_name == "torch._utils._rebuild_tensor_v2"


def test_a_forged_memo_index_allocates_nothing(tmp_path):
    """C's unpickler sizes its memo by the largest index named: this 10-byte file would make it zero 256 MiB."""
    (tmp_path / "memo.pkl").write_bytes(b"\x80\x02}r" + struct.pack("<I", 1 << 24) + b".")  # {} stored at 2^24
    tracemalloc.start()
    try:
        assert read_network_pickle(tmp_path / "memo.pkl").entries == {}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


# ----------------------------------------------------------------------------------- corrupt and bad files


def test_truncated_snapshots_give_a_clear_error(tmp_path, song):
    write_pickle(tmp_path / "full.pkl", edm_snapshot_data(song))
    data = (tmp_path / "full.pkl").read_bytes()
    for cut in (len(data) // 3, len(data) - 1):
        (tmp_path / "cut.pkl").write_bytes(data[:cut])
        with pytest.raises(SnapshotError, match="truncated or corrupt"):
            read_network_pickle(tmp_path / "cut.pkl")


def test_a_tensor_view_outside_its_storage_is_refused(tmp_path):
    storage = torch.arange(4.0)._typed_storage()  # what a pickled tensor refers to
    fake = CallsOnLoad(torch._utils._rebuild_tensor_v2, storage, 0, (100,), (1,), False, OrderedDict())
    write_pickle(tmp_path / "bad.pkl", {"ema": fake})
    with pytest.raises(SnapshotError, match=r"reaches element 99, but its storage has 4"):
        read_network_pickle(tmp_path / "bad.pkl")


def test_a_storage_whose_size_disagrees_with_its_bytes_is_refused(tmp_path):
    buffer = io.BytesIO()
    torch.save(torch.arange(6.0)._typed_storage(), buffer, _use_new_zipfile_serialization=False)
    blob = buffer.getvalue()[:-4]  # the last element cut off
    write_pickle(tmp_path / "bad.pkl", {"ema": CallsOnLoad(torch.storage._load_from_bytes, blob)})
    with pytest.raises(SnapshotError, match=r"6 torch.float32 elements needs 24 bytes, but 20 follow"):
        read_network_pickle(tmp_path / "bad.pkl")


def test_files_that_are_not_snapshots(tmp_path):
    (tmp_path / "empty.pkl").write_bytes(b"")
    (tmp_path / "text.pkl").write_text("not a pickle at all")
    torch.save({"w": torch.zeros(2)}, tmp_path / "zip.pkl")
    write_pickle(tmp_path / "list.pkl", [1, 2])
    cases = {
        "empty.pkl": "not a pickle of protocol 2",
        "text.pkl": "not a pickle of protocol 2",
        "zip.pkl": "torch.save zip archive.*network-snapshot",
        "list.pkl": "holds a list, not the dict of entries",
    }
    for name, message in cases.items():
        with pytest.raises(SnapshotError, match=message):
            read_network_pickle(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="network snapshot not found"):
        read_network_pickle(tmp_path / "missing.pkl")


def test_trailing_data_after_the_pickle_is_refused(tmp_path, song):
    write_pickle(tmp_path / "s.pkl", edm_snapshot_data(song))
    with open(tmp_path / "s.pkl", "ab") as f:
        f.write(b"junk")
    with pytest.raises(SnapshotError, match="data after the end of its pickle"):
        read_network_pickle(tmp_path / "s.pkl")


def test_an_unknown_persistence_version_is_refused(tmp_path):
    write_pickle(tmp_path / "s.pkl", {"ema": Persisted("EDMPrecond", {}, version=5)})
    with pytest.raises(SnapshotError, match="version 5.*version 6"):
        read_network_pickle(tmp_path / "s.pkl")


def test_a_snapshot_larger_than_the_memory_is_refused_before_reading(tmp_path, song, monkeypatch):
    write_pickle(tmp_path / "s.pkl", edm_snapshot_data(song))
    monkeypatch.setattr(cmkit.limits, "available_memory", lambda device=None: 1024)
    with pytest.raises(ValueError, match=r"reading the network snapshot .*s\.pkl.*only 1\.0 KiB is available"):
        read_network_pickle(tmp_path / "s.pkl")


def test_records_are_inert_values():
    record = RecordedObject("SongUNet", init_kwargs={"model_channels": 4})
    assert record.source_sha256 is None and record.children == {} and record.state_dict == {}
    with pytest.raises(SnapshotError, match="has no submodule 'model'"):
        record.child("model")
