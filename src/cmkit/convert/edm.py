"""EDM / EDM2 / ECT network snapshots (``.pkl``, read safely by :mod:`cmkit.io.snapshot_pickle`) as cmkit denoisers.

A snapshot's ``ema`` is a preconditioner wrapping the network ``F``. cmkit's :class:`~cmkit.models.denoiser.Denoiser`
reproduces three of them exactly (:data:`PRECONDITIONERS`):

* EDM's ``EDMPrecond`` (Karras et al. 2022, table 1, "ours") and EDM2's ``Precond`` (Karras et al. 2024, the same
  formulas; also ECT's ImageNet branch): ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)``,
  ``c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)``, ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``,
  ``c_noise = ln(sigma) / 4``: parameterization ``"edm"``;
* ECT's ``ECMPrecond`` (Geng et al. 2024) in eval mode, as snapshots are saved: the consistency scalings of CM
  appendix C, ``c_skip = sigma_data^2 / ((sigma - eps)^2 + sigma_data^2)``,
  ``c_out = (sigma - eps) sigma_data / sqrt(sigma^2 + sigma_data^2)`` with ``eps`` its recorded ``sigma_min``:
  parameterization ``"consistency"``.

``sigma_data`` and ``sigma_min`` are read from the preconditioner's recorded attributes (the values it ran with,
whatever the defaults of its source). EDM's baselines ``VPPrecond``, ``VEPrecond`` and ``iDDPMPrecond`` use another
``c_noise`` (and ``c_in`` / ``c_out``) and are refused (:data:`UNSUPPORTED_PRECONDITIONERS`).

``F`` is rebuilt by cmkit's own code, never the snapshot's: ``REFERENCE_NETWORKS[name](**recorded_kwargs)`` from
:mod:`cmkit.models.reference_nets` (``"SongUNet"``, ``"DhariwalUNet"``, ``"edm2.UNet"``), then
``load_reference_state_dict(net, state_dict)`` with the network's tensors under EDM's own names. Those networks
take the call cmkit makes of every network, ``net(c_in x, 250 ln sigma, class_labels=..., return_dict=False)``
(1000 times EDM's ``c_noise``), see :mod:`cmkit.models.denoiser`. EDM2's uncertainty head (``logvar_fourier``,
``logvar_linear``) only weights its training loss and is dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from .._validate import require_int, require_positive
from ..io.snapshot_pickle import NetworkSnapshot, RecordedObject, SnapshotError, read_network_pickle
from ..karras import SIGMA_MAX, SIGMA_MIN, Parameterization
from ..models.denoiser import Denoiser

NetworkFactories = Mapping[str, Callable[..., nn.Module]]
StateDictLoader = Callable[[nn.Module, Mapping[str, Tensor]], Any]


@dataclass(frozen=True)
class Preconditioner:
    """How one recorded preconditioner maps onto :class:`Denoiser`: its parameterization, the submodule holding
    ``F``, the classes ``F`` may have (recorded name -> ``REFERENCE_NETWORKS`` key) and submodules to drop."""

    parameterization: Parameterization
    inner: str
    networks: Mapping[str, str]
    dropped: tuple[str, ...] = ()


_EDM_NETWORKS = {"SongUNet": "SongUNet", "DhariwalUNet": "DhariwalUNet"}
#: the preconditioners cmkit's Denoiser reproduces exactly, by recorded class name.
PRECONDITIONERS: dict[str, Preconditioner] = {
    "EDMPrecond": Preconditioner("edm", "model", _EDM_NETWORKS),
    "ECMPrecond": Preconditioner("consistency", "model", _EDM_NETWORKS),
    "Precond": Preconditioner("edm", "unet", {"UNet": "edm2.UNet"}, ("logvar_fourier", "logvar_linear")),
}
#: EDM's baseline preconditioners, refused, and what differs (EDM table 1).
UNSUPPORTED_PRECONDITIONERS: dict[str, str] = {
    "VPPrecond": "c_noise = (M - 1) t(sigma) (the VP time), c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1)",
    "VEPrecond": "c_noise = ln(sigma / 2), c_skip = 1, c_out = sigma, c_in = 1",
    "iDDPMPrecond": "c_noise = the index of the nearest of M discrete noise levels, c_out = -sigma",
}


@dataclass(frozen=True)
class EDMNetwork:
    """A snapshot's network, read: what to build (``network`` with ``network_kwargs``), its weights under the
    reference names, and the preconditioning around it."""

    preconditioner: str
    parameterization: Parameterization
    sigma_data: float
    sigma_min: float
    label_dim: int
    network: str
    network_kwargs: dict[str, Any]
    state_dict: dict[str, Tensor] = field(repr=False)
    dropped: tuple[str, ...] = ()
    source_sha256: Optional[str] = None


def _attribute(record: RecordedObject, name: str) -> Any:
    if name not in record.attributes:
        raise SnapshotError(
            f"the {record.class_name} in the snapshot records no {name!r}; it is not a known EDM preconditioner"
        )
    return record.attributes[name]


def describe_edm_network(snapshot: NetworkSnapshot, key: str = "ema") -> EDMNetwork:
    """What the network under ``key`` is: its preconditioning and its inner network's recorded construction."""
    precond = snapshot.network(key)
    name = precond.class_name
    if name in UNSUPPORTED_PRECONDITIONERS:
        raise SnapshotError(
            f"{snapshot.path} holds a {name}, whose preconditioning cmkit does not implement "
            f"({UNSUPPORTED_PRECONDITIONERS[name]}); cmkit's Denoiser reproduces {', '.join(PRECONDITIONERS)} "
            "(c_noise = ln(sigma) / 4): use an EDMPrecond snapshot (EDM's edm-*.pkl models)"
        )
    spec = PRECONDITIONERS.get(name)
    if spec is None:
        raise SnapshotError(
            f"{snapshot.path} holds a {name}, not a preconditioner cmkit knows ({', '.join(PRECONDITIONERS)})"
        )
    inner = precond.child(spec.inner)
    reference = spec.networks.get(inner.class_name)
    if reference is None:
        raise SnapshotError(
            f"the {name} in {snapshot.path} wraps a {inner.class_name}; cmkit rebuilds only "
            f"{', '.join(spec.networks)} inside a {name}"
        )
    if inner.init_args or inner.init_kwargs is None:
        raise SnapshotError(f"the {inner.class_name} in {snapshot.path} did not record its constructor keywords")
    outside = sorted(
        k for k in precond.state_dict if not any(k.startswith(p + ".") for p in (spec.inner, *spec.dropped))
    )
    if outside:
        raise SnapshotError(f"the {name} in {snapshot.path} has weights outside its network: {', '.join(outside[:8])}")
    sigma_data = require_positive(f"{name}.sigma_data", _attribute(precond, "sigma_data"), f" (in {snapshot.path})")
    sigma_min = SIGMA_MIN
    if spec.parameterization == "consistency":
        sigma_min = require_positive(f"{name}.sigma_min", _attribute(precond, "sigma_min"), f" (in {snapshot.path})")
    return EDMNetwork(
        preconditioner=name,
        parameterization=spec.parameterization,
        sigma_data=sigma_data,
        sigma_min=sigma_min,
        label_dim=require_int(f"{name}.label_dim", _attribute(precond, "label_dim"), 0),
        network=reference,
        network_kwargs=dict(inner.init_kwargs),
        state_dict=dict(inner.state_dict),
        dropped=tuple(k for k in precond.state_dict if not k.startswith(spec.inner + ".")),
        source_sha256=inner.source_sha256,
    )


def reference_networks() -> tuple[NetworkFactories, StateDictLoader]:
    """cmkit's rebuilds of the EDM / EDM2 networks and their weight loader (:mod:`cmkit.models.reference_nets`)."""
    try:
        from ..models import reference_nets
    except ImportError as err:
        raise SnapshotError(
            f"cmkit's EDM / EDM2 reference networks (cmkit.models.reference_nets) cannot be imported ({err}); "
            "update cmkit to a version that has them"
        ) from err
    return reference_nets.REFERENCE_NETWORKS, reference_nets.load_reference_state_dict


def build_edm_denoiser(
    network: EDMNetwork, networks: Optional[NetworkFactories] = None, load_state_dict: Optional[StateDictLoader] = None
) -> Denoiser:
    """The :class:`Denoiser` of ``network``, built by cmkit's own code (``networks``, ``load_state_dict``: the
    reference networks by default), in eval mode."""
    if networks is None or load_state_dict is None:
        default_networks, default_loader = reference_networks()
        networks, load_state_dict = networks or default_networks, load_state_dict or default_loader
    factory = networks.get(network.network)
    if factory is None:
        raise SnapshotError(f"cmkit has no reference network {network.network!r}; it has {', '.join(networks)}")
    try:
        net = factory(**network.network_kwargs)
    except TypeError as err:
        raise SnapshotError(
            f"cmkit's {network.network} does not take the snapshot's recorded arguments ({err}); the snapshot was "
            "made by a modified copy of the network code, which cmkit does not rebuild"
        ) from err
    load_state_dict(net, network.state_dict)
    denoiser = Denoiser(net, network.parameterization, sigma_min=network.sigma_min, sigma_data=network.sigma_data)
    return denoiser.eval()


def load_edm_denoiser(
    path: Union[str, os.PathLike], key: str = "ema", networks: Optional[NetworkFactories] = None,
    load_state_dict: Optional[StateDictLoader] = None,
) -> Denoiser:  # fmt: skip
    """Read the snapshot at ``path`` safely and return the :class:`Denoiser` of its network ``key``."""
    return build_edm_denoiser(describe_edm_network(read_network_pickle(path), key), networks, load_state_dict)


def convert_edm_snapshot(
    path: Union[str, os.PathLike], out_dir: Union[str, os.PathLike], *, key: str = "ema",
    num_train_timesteps: int = 40, dtype: torch.dtype = torch.float32, networks: Optional[NetworkFactories] = None,
    load_state_dict: Optional[StateDictLoader] = None,
) -> Path:  # fmt: skip
    """Write the network of an EDM / EDM2 / ECT snapshot as a pipeline directory; returns ``out_dir``.

    ``model_index.json`` records the parameterization (``"edm"``: a diffusion teacher for ``cmkit train --teacher``;
    ``"consistency"``: an ECT consistency model), the scheduler the Karras grid of ``num_train_timesteps`` points
    over ``[sigma_min, 80]`` with the snapshot's ``sigma_data`` (and, for ECT, its ``sigma_min``).
    """
    from ..pipeline import ConsistencyModelPipeline
    from ..schedulers.cm import CMStochasticIterativeScheduler

    network = describe_edm_network(read_network_pickle(path), key)
    denoiser = build_edm_denoiser(network, networks, load_state_dict)
    scheduler = CMStochasticIterativeScheduler(
        num_train_timesteps=num_train_timesteps, sigma_min=network.sigma_min, sigma_max=SIGMA_MAX,
        sigma_data=network.sigma_data,
    )  # fmt: skip
    pipe = ConsistencyModelPipeline(unet=denoiser.net.to(dtype), scheduler=scheduler)
    pipe.parameterization = network.parameterization
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out
