"""The reference implementations' networks by their recorded names: build from recorded arguments, load tensors.

An EDM / EDM2 / ECT network snapshot records, for each network object, its class name, its constructor keyword
arguments and its tensors. A reader of such snapshots (that never executes their code) builds the cmkit network
with :data:`REFERENCE_NETWORKS` and loads the tensors with :func:`load_reference_state_dict`:

* ``"SongUNet"``, ``"DhariwalUNet"``: EDM's ``training/networks.py`` classes (ECT uses them too); the state-dict
  keys are the reference's, unchanged.
* ``"edm2.UNet"``: EDM2's ``training/networks_edm2.py`` ``UNet``, whose keyword arguments include its blocks'
  (``dropout``, ``res_balance``, ...), and ECT's ImageNet copy of it, which adds ``dropout_res`` (ECT treats a
  recorded 0 as "no restriction", as its ``if dropout_res and ...`` does; it becomes cmkit's None).
* ``"EDMPrecond"``, ``"ECMPrecond"`` (ECT's, locuslab/ect), ``"edm2.Precond"``: the preconditioning wrappers,
  for a reader that prefers to hand over the wrapper's arguments and tensors (``model.*``; ``unet.*`` plus EDM2's
  uncertainty head ``logvar_*``, which becomes the network's ``logvar_channels`` head). The wrappers' own
  arguments (``use_fp16``, ``sigma_min``, ``sigma_max``, ``sigma_data``) do not describe the network and are not
  used here; they belong in :class:`~cmkit.models.denoiser.Denoiser`: EDM's and EDM2's wrappers are
  ``Denoiser(net, "edm", sigma_data=sigma_data)``, ECT's ``ECMPrecond`` in evaluation is
  ``Denoiser(net, "consistency", sigma_min=sigma_min, sigma_data=sigma_data)`` (its ``sigma_min`` is 0.003).

Unknown arguments and unsupported values raise a ``ValueError`` naming them.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import Tensor, nn

from .dhariwal_unet import DhariwalUNet
from .edm2_unet import EDM2UNet
from .modeling import load_exact_state_dict
from .song_unet import SongUNet

#: EDMPrecond / EDM2 Precond arguments that configure the wrapper, not the network.
_EDM_PRECOND_ONLY = ("use_fp16", "sigma_min", "sigma_max", "sigma_data")
_EDM2_PRECOND_ONLY = ("use_fp16", "sigma_data")


def _build(cls: type[nn.Module], reference_name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    allowed = cls.config_keys()  # type: ignore[attr-defined]
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown:
        raise ValueError(
            f"the recorded {reference_name} arguments {unknown} are not arguments of cmkit's {cls.__name__} "
            f"({', '.join(allowed)}); this snapshot's network is a variant cmkit does not implement"
        )
    return cls(**kwargs)


def build_song_unet(**kwargs: Any) -> nn.Module:
    """EDM's ``SongUNet(**kwargs)`` as cmkit's :class:`~cmkit.models.song_unet.SongUNet`."""
    return _build(SongUNet, "SongUNet", kwargs)


def build_dhariwal_unet(**kwargs: Any) -> nn.Module:
    """EDM's ``DhariwalUNet(**kwargs)`` as cmkit's :class:`~cmkit.models.dhariwal_unet.DhariwalUNet`."""
    return _build(DhariwalUNet, "DhariwalUNet", kwargs)


def _ect_dropout_res(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ECT's ``dropout_res`` of 0, which its UNet reads as no restriction (a falsy value), as None."""
    out = dict(kwargs)
    if "dropout_res" in out and not isinstance(out["dropout_res"], bool) and out["dropout_res"] == 0:
        out["dropout_res"] = None
    return out


def build_edm2_unet(**kwargs: Any) -> nn.Module:
    """EDM2's ``UNet(**kwargs)`` (block arguments included; also ECT's, with ``dropout_res``) as cmkit's
    :class:`~cmkit.models.edm2_unet.EDM2UNet`."""
    if "logvar_channels" in kwargs:
        raise ValueError("logvar_channels is an argument of EDM2's Precond, not of its UNet; use 'edm2.Precond'")
    return _build(EDM2UNet, "edm2.UNet", _ect_dropout_res(kwargs))


def build_edm_precond(
    img_resolution: int, img_channels: int, label_dim: int = 0, model_type: str = "DhariwalUNet", **kwargs: Any
) -> nn.Module:
    """The network inside EDM's ``EDMPrecond(**kwargs)`` (or ECT's ``ECMPrecond``, which has the same arguments):
    ``model_type`` with ``in_channels = out_channels = img_channels``; the wrapper's own arguments are dropped."""
    builders = {"SongUNet": build_song_unet, "DhariwalUNet": build_dhariwal_unet}
    if model_type not in builders:
        raise ValueError(f"EDMPrecond's model_type {model_type!r} is not one of {sorted(builders)}")
    model_kwargs = {k: v for k, v in kwargs.items() if k not in _EDM_PRECOND_ONLY}
    return builders[model_type](img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels,
                                label_dim=label_dim, **model_kwargs)  # fmt: skip


def build_edm2_precond(
    img_resolution: int, img_channels: int, label_dim: int, logvar_channels: int = 128, **kwargs: Any
) -> nn.Module:
    """The UNet inside EDM2's ``Precond(**kwargs)``, with the wrapper's uncertainty head (``logvar_channels``)."""
    unet_kwargs = _ect_dropout_res({k: v for k, v in kwargs.items() if k not in _EDM2_PRECOND_ONLY})
    return _build(EDM2UNet, "edm2.Precond", dict(img_resolution=img_resolution, img_channels=img_channels,
                                                 label_dim=label_dim, logvar_channels=logvar_channels, **unet_kwargs))


#: recorded class name -> a builder taking the recorded constructor keyword arguments.
REFERENCE_NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "SongUNet": build_song_unet,
    "DhariwalUNet": build_dhariwal_unet,
    "edm2.UNet": build_edm2_unet,
    "EDMPrecond": build_edm_precond,
    "ECMPrecond": build_edm_precond,  # ECT's wrapper: EDMPrecond's arguments, consistency scalings
    "edm2.Precond": build_edm2_precond,
}


def _strip_prefix(state_dict: Mapping[str, Tensor], prefix: str, keep: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """``state_dict`` without ``prefix`` when every key (but those starting with ``keep``) has it; else as given."""
    keys = [k for k in state_dict if not k.startswith(keep)] if keep else list(state_dict)
    if not keys or not all(k.startswith(prefix) for k in keys):
        return dict(state_dict)
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def load_reference_state_dict(net: nn.Module, state_dict: Mapping[str, Tensor], source: str = "the snapshot") -> None:
    """Load the reference implementation's tensors into ``net`` (built by :data:`REFERENCE_NETWORKS`), strictly.

    The keys are the reference's own; a wrapper's state dict (EDM's ``model.*``, EDM2's ``unet.*`` and
    ``logvar_*``) is accepted too. Missing or unexpected keys and shape mismatches raise a ``ValueError`` listing
    them. ``net`` may be on the meta device (the tensors are then assigned, keeping their dtype).
    """
    if isinstance(net, EDM2UNet):
        state = _strip_prefix(state_dict, "unet.", keep=("logvar_",))
        has_head = hasattr(net, "logvar_linear")
        if any(k.startswith("logvar_") for k in state) and not has_head:
            raise ValueError(
                f"{source} holds EDM2's uncertainty head (logvar_*) but the network was built without one; build it "
                "with 'edm2.Precond' (or logvar_channels=128) to keep it, or drop the logvar_* tensors"
            )
    elif isinstance(net, (SongUNet, DhariwalUNet)):
        state = _strip_prefix(state_dict, "model.")
    else:
        raise TypeError(f"load_reference_state_dict loads EDM / EDM2 networks, not {type(net).__name__}")
    load_exact_state_dict(net, state, source=source)
