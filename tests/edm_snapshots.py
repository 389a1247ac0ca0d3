"""Write network snapshots in the pickle format of EDM / EDM2 / ECT, for the tests of cmkit's safe reader.

Nothing here comes from those projects. Their ``torch_utils.persistence`` pickles each object of a decorated class
as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``, ``meta = {"type": "class", "version": 6,
"module_src": ..., "class_name": ..., "state": <the object's __dict__, with _init_args / _init_kwargs>}``;
:class:`Persisted` emits exactly that. :func:`persisted_module` turns a real ``nn.Module`` tree into such objects
(``torch.nn`` containers stay real containers, as in those projects), so the tensors are pickled by torch itself
(``_rebuild_parameter`` / ``_rebuild_tensor_v2`` / ``_load_from_bytes``). The module names the pickle needs
(``torch_utils.persistence``, ``dnnlib.util``) exist in ``sys.modules`` only while :func:`write_pickle` runs.
"""

from __future__ import annotations

import contextlib
import copy
import math
import pickle
import sys
import types
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

#: the module source recorded in the test snapshots (never executed by cmkit; the marker would show if it were).
SOURCE = "# stand-in for the source of the module that defined the class; cmkit must never execute it\n"
_CONTAINERS = (nn.ModuleDict, nn.ModuleList, nn.Sequential)
_PLAIN = (bool, int, float, str, type(None), np.generic)
_TORCH_KEYS = {"training", "_parameters", "_buffers", "_non_persistent_buffers_set"}


def _reconstruct_persistent_obj(meta):  # pragma: no cover - pickled by name, never called by the tests
    raise AssertionError("the tests only write snapshots")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"


class EasyDict(dict):
    """Pickled as ``dnnlib.util.EasyDict``, like EDM2's top-level snapshot dict."""


EasyDict.__module__ = "dnnlib.util"


@contextlib.contextmanager
def fake_modules(extra: Optional[dict[str, dict[str, Any]]] = None):
    """``torch_utils.persistence`` and ``dnnlib.util`` (plus ``extra``) in ``sys.modules`` for the duration."""
    contents = {
        "torch_utils": {},
        "torch_utils.persistence": {"_reconstruct_persistent_obj": _reconstruct_persistent_obj},
        "dnnlib": {},
        "dnnlib.util": {"EasyDict": EasyDict},
        **(extra or {}),
    }
    saved = {name: sys.modules.get(name) for name in contents}
    try:
        for name, attrs in contents.items():
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


class Persisted:
    """An object of a persistent class, as ``torch_utils.persistence`` pickles it."""

    def __init__(self, class_name: str, state: dict[str, Any], source: str = SOURCE, version: int = 6) -> None:
        self.class_name, self.state, self.source, self.version = class_name, state, source, version

    def __reduce__(self):
        meta = dict(type="class", version=self.version, module_src=self.source, class_name=self.class_name,
                    state=self.state)  # fmt: skip
        return _reconstruct_persistent_obj, (meta,), None


def persisted_object(class_name: str, attributes: dict, init_kwargs: Optional[dict] = None, **kw) -> Persisted:
    """A persistent object that is not a module (a loss function, an augmentation pipe, an encoder)."""
    recorded = dict(attributes if init_kwargs is None else init_kwargs)
    state = {**attributes, "_init_args": (), "_init_kwargs": recorded}
    return Persisted(class_name, state, **kw)


def _is_plain(value: Any) -> bool:
    return isinstance(value, _PLAIN) or (isinstance(value, (list, tuple)) and all(isinstance(v, _PLAIN) for v in value))


def _module_state(module: nn.Module, children: dict[str, Any]) -> dict[str, Any]:
    """The module's ``__dict__`` as pickled: torch's bookkeeping as is, the submodules replaced, public plain
    attributes (other private attributes, such as a cmkit network's diffusers config, are left out)."""
    state = {}
    for key, value in vars(module).items():
        if key == "_modules":
            state[key] = children
        elif key in _TORCH_KEYS or ("hook" in key if key.startswith("_") else _is_plain(value)):
            state[key] = value
    return state


def persisted_module(
    module: nn.Module,
    class_name: Optional[str] = None,
    init_kwargs: Optional[dict[str, Any]] = None,
    attributes: Optional[dict[str, Any]] = None,
    names: Optional[dict[int, str]] = None,
    source: str = SOURCE,
) -> Any:
    """``module`` and its submodules as persistent objects (containers as real ``torch.nn`` containers).

    ``class_name`` names the top object (default: its class name), ``names`` maps ``id(submodule)`` to another
    class name, ``attributes`` adds plain attributes to the top object.
    """
    return _persisted(module, class_name, init_kwargs, attributes, names or {}, source, {})


def _persisted(module, class_name, init_kwargs, attributes, names, source, memo):
    if id(module) in memo:  # a submodule under two names is one object, as in the pickled module
        return memo[id(module)]
    children = {
        key: None if child is None else _persisted(child, names.get(id(child)), None, None, names, source, memo)
        for key, child in module._modules.items()
    }
    state = _module_state(module, children)
    if isinstance(module, _CONTAINERS):
        container = object.__new__(type(module))
        container.__dict__.update(state)
        memo[id(module)] = container
        return container
    state.update(attributes or {})
    state["_init_args"] = ()
    state["_init_kwargs"] = dict(init_kwargs or {})
    memo[id(module)] = Persisted(class_name or type(module).__name__, state, source)
    return memo[id(module)]


def write_pickle(path, data: Any, protocol: int = pickle.DEFAULT_PROTOCOL, extra_modules=None) -> None:
    """``pickle.dump(data)`` with the projects' module names present only while it runs."""
    with fake_modules(extra_modules), open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)


# ---------------------------------------------------------------------------------------- EDM-like networks


class Conv(nn.Module):
    def __init__(self, cin: int, cout: int, resample: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.randn(cout))
        if resample:
            taps = torch.tensor([[1.0, 3.0, 3.0, 1.0]])
            self.register_buffer("resample_filter", taps.T @ taps)
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.skip_scale = np.sqrt(0.5)  # numpy scalar attribute, as EDM's blocks record
        self.norm0 = nn.GroupNorm(1, cin)
        self.conv0 = Conv(cin, cout)
        self.affine = nn.Linear(8, cout)
        self.skip = Conv(cin, cout) if cin != cout else None


class SongUNetLike(nn.Module):
    """A small network with the shape of EDM's SongUNet pickles: ModuleDicts of blocks, buffers, empty slots."""

    def __init__(self, channels: int = 3, width: int = 4) -> None:
        super().__init__()
        self.img_resolution = 8
        self.map_layer0 = nn.Linear(8, 8)
        self.enc = nn.ModuleDict({"8x8_conv": Conv(channels, width), "8x8_block0": Block(width, 2 * width)})
        self.dec = nn.ModuleDict({"4x4_up": Conv(2 * width, width, resample=True), "8x8_aux": Conv(width, channels)})


SONG_KWARGS = dict(img_resolution=8, in_channels=3, out_channels=3, label_dim=0, model_channels=4, channel_mult=[1, 2],
                   resample_filter=[1, 1], dropout=0.13, embedding_type="positional")  # fmt: skip


_INTERFACE = ("img_resolution", "img_channels", "in_channels", "out_channels", "label_dim")


def model_kwargs(inner_kwargs: dict) -> dict:
    """The inner network's recorded arguments less those the preconditioner passes itself (its ``**model_kwargs``)."""
    return {k: v for k, v in inner_kwargs.items() if k not in _INTERFACE}


def edm_snapshot_data(inner: Optional[nn.Module] = None, *, precond: str = "EDMPrecond", inner_name: str = "SongUNet",
                      inner_kwargs: Optional[dict] = None, sigma_data: float = 0.5, label_dim: int = 0,
                      extra_precond: Optional[dict] = None, source: str = SOURCE) -> dict:  # fmt: skip
    """What EDM's (and ECT's CIFAR-10) training loop pickles: ``{ema, loss_fn, augment_pipe, dataset_kwargs}``."""
    torch.manual_seed(0)
    inner = SongUNetLike() if inner is None else inner
    inner = copy.deepcopy(inner).eval().requires_grad_(False)
    inner_kwargs = dict(SONG_KWARGS if inner_kwargs is None else inner_kwargs)
    precond_attrs = dict(img_resolution=8, img_channels=3, label_dim=label_dim, use_fp16=False, sigma_min=0,
                         sigma_max=math.inf, sigma_data=sigma_data)  # fmt: skip
    precond_attrs.update(extra_precond or {})
    wrapper = nn.Module()
    wrapper.model = inner
    wrapper.eval()
    ema = persisted_module(
        wrapper, precond, attributes=precond_attrs, source=source,
        init_kwargs=dict(img_resolution=8, img_channels=3, label_dim=label_dim, model_type=inner_name,
                         **model_kwargs(inner_kwargs)),
        names={id(inner): inner_name},
    )  # fmt: skip
    ema.state["_modules"]["model"].state["_init_kwargs"] = inner_kwargs
    return dict(
        ema=ema,
        loss_fn=persisted_object("EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=sigma_data)),
        augment_pipe=persisted_object("AugmentPipe", dict(p=0.12, xflip=1e8, yflip=1.0)),
        dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="cifar10-32x32.zip",
                            use_labels=False, xflip=False, cache=True, resolution=32, max_size=50000),  # fmt: skip
    )


class EDM2UNetLike(nn.Module):
    """A small network with the shape of EDM2's UNet pickles (0-d gains, MP convs without biases)."""

    def __init__(self, channels: int = 4, width: int = 8) -> None:
        super().__init__()
        self.out_gain = nn.Parameter(torch.randn([]))
        self.enc = nn.ModuleDict({"8x8_conv": Conv(channels + 1, width)})
        self.dec = nn.ModuleDict({"8x8_block0": Block(width, width)})
        self.emb_label = nn.Linear(10, 8, bias=False)


RAW_STD = [4.17, 4.62, 3.71, 3.28]
EDM2_KWARGS = dict(img_resolution=8, img_channels=4, label_dim=10, model_channels=8, channel_mult=[1, 2],
                   num_blocks=1, attn_resolutions=[4], dropout=0.0)  # fmt: skip


def edm2_snapshot_data(inner: Optional[nn.Module] = None, *, inner_kwargs: Optional[dict] = None,
                       sigma_data: float = 0.5, dtype: torch.dtype = torch.float16,
                       uncertainty_head: bool = True) -> EasyDict:  # fmt: skip
    """What EDM2's training loop pickles: an EasyDict of ``encoder``, ``dataset_kwargs``, ``loss_fn`` and a float16
    ``ema`` (a ``Precond`` around ``unet`` plus the uncertainty head ``logvar_fourier`` / ``logvar_linear``).
    ``uncertainty_head=False``: ECT's ImageNet ``Precond``, which has the head commented out."""
    torch.manual_seed(1)
    inner = EDM2UNetLike() if inner is None else inner
    inner_kwargs = dict(EDM2_KWARGS if inner_kwargs is None else inner_kwargs)
    wrapper = nn.Module()
    wrapper.unet = copy.deepcopy(inner)
    names = {id(wrapper.unet): "UNet"}
    if uncertainty_head:
        wrapper.logvar_fourier = nn.Module()
        wrapper.logvar_fourier.register_buffer("freqs", torch.randn(16))
        wrapper.logvar_linear = nn.Linear(16, 1, bias=False)
        names.update({id(wrapper.logvar_fourier): "MPFourier", id(wrapper.logvar_linear): "MPConv"})
    wrapper = wrapper.eval().requires_grad_(False).to(dtype)
    precond_kwargs = dict(img_resolution=8, img_channels=4, label_dim=10, **model_kwargs(inner_kwargs))
    ema = persisted_module(
        wrapper, "Precond", init_kwargs=precond_kwargs,
        attributes=dict(img_resolution=8, img_channels=4, label_dim=10, use_fp16=True, sigma_data=sigma_data),
        names=names,
    )  # fmt: skip
    ema.state["_modules"]["unet"].state["_init_kwargs"] = inner_kwargs
    encoder = persisted_object(
        "StabilityVAEEncoder",
        dict(vae_name="stabilityai/sd-vae-ft-mse", scale=np.float32(0.5) / np.array(RAW_STD, np.float32),
             bias=np.zeros(4, np.float32), batch_size=8, _vae=None),  # fmt: skip
        init_kwargs={},
    )
    return EasyDict(
        encoder=encoder,
        dataset_kwargs=EasyDict(class_name="training.dataset.ImageFolderDataset", path="img64.zip"),
        loss_fn=persisted_object("EDM2Loss", dict(P_mean=-0.4, P_std=1.0, sigma_data=sigma_data)),
        ema=ema,
    )


def reference_state_dict(module: nn.Module, prefix: str = "", dtype: Optional[torch.dtype] = None) -> dict:
    """``module.state_dict()`` with ``prefix`` added (what the snapshot's flat state dict must equal)."""
    return {prefix + k: (v if dtype is None else v.to(dtype)) for k, v in module.state_dict().items()}
