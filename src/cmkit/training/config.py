"""The typed configuration of a training run; its JSON alone reproduces the run.

``TrainConfig`` (with a nested ``DataConfig``) round-trips through JSON (``to_json`` / ``from_json``). Unknown
keys and values outside a ``Literal`` are errors that name the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

from ..data import PATH_KINDS, DataKind
from ..data.folder import ResizeMode
from .._validate import check_choice, is_int, require_int, require_positive
from ..fields import documented
from ..io.atomic import atomic_write_text
from .objectives import TEACHER_METHODS, Method
from .power_ema import check_sigma_rel

Precision = Literal["fp32", "bf16", "fp16"]
OptimizerName = Literal["radam", "adam"]
LRSchedule = Literal["constant", "cosine", "inverse_sqrt"]
ExportWeights = Literal["ema", "online"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass
class DataConfig:
    """Which data to train on: the embedded ``digits``, a 2-D ``toy`` set, or images (``folder``, ``zip``, ``prepared``,
    ``hf``, ``wds``)."""

    kind: DataKind = documented("digits", "set by --data", cli=False)
    toy: Optional[str] = documented(None, "set by --data toy:NAME", cli=False)
    path: Optional[str] = documented(
        None, "set by --data folder:PATH, zip:PATH, prepared:PATH, hf:PATH or wds:PATTERN", cli=False)
    resolution: Optional[int] = documented(
        None, "image size in pixels (digits: a multiple of 8; folder, zip: required unless --resize none; prepared: "
        "as prepared)")
    resize: ResizeMode = documented("crop", "folder and zip images: centre crop, stretch, or keep")
    flip: bool = documented(False, "random horizontal flips")
    channels: Optional[Literal[1, 3]] = documented(
        None, "images: 1 (grayscale) or 3 (RGB; None means 3); the digits are grayscale, toys are points")
    class_labels: Optional[bool] = documented(
        None, "use class labels (digits classes, folder sub-folders); None: when the data have them")
    image_column: Optional[str] = documented(
        None, "hf: the image column (None: the Image feature, else 'image' or 'img')")
    label_column: Optional[str] = documented(
        None, "hf: the class-label column (None: the ClassLabel feature, else 'label' or 'labels')")
    split: Optional[str] = documented(None, "hf: the split of a DatasetDict or parquet folder (None: train)")
    workers: int = documented(
        2, "image data (folder, zip, prepared, hf, wds): background processes that decode and prefetch batches (0: none, "
        "read in the training process); does not change the batches")

    def __post_init__(self) -> None:
        require_int("workers", self.workers, 0, " (background data processes; 0 reads in the training process)", 256)
        hf_only = [f"--{name.replace('_', '-')}" for name in ("image_column", "label_column", "split") if getattr(self, name)]
        if hf_only and self.kind != "hf":
            raise ValueError(f"{', '.join(hf_only)} apply to hf:PATH data only; drop them for {self.kind} data")

    @classmethod
    def parse(cls, spec: str, **options: Any) -> "DataConfig":
        """From a spec ``digits``, ``toy:8gaussians`` / ``toy:moons`` / ``toy:swissroll``, ``folder:PATH``,
        ``zip:PATH`` (an EDM dataset archive), ``prepared:PATH`` (made by ``cmkit data prepare``), ``hf:PATH`` (a Hugging
        Face data set saved locally) or ``wds:PATTERN`` (webdataset tar shards, e.g. ``shards-{000..099}.tar``)."""
        kind, _, arg = spec.partition(":")
        if kind == "digits" and not arg:
            return cls(kind="digits", **options)
        if kind == "toy" and arg:
            return cls(kind="toy", toy=arg, **options)
        if kind in PATH_KINDS and arg:
            return cls(kind=kind, path=arg, **options)  # type: ignore[arg-type]
        raise ValueError(
            f"cannot read the data spec {spec!r}; use digits, toy:8gaussians, toy:moons, toy:swissroll, folder:PATH, "
            "zip:PATH, prepared:PATH, hf:PATH or wds:PATTERN"
        )

    def spec(self) -> str:
        """The short spec string (``digits``, ``toy:NAME`` or ``KIND:PATH``)."""
        return {"digits": "digits", "toy": f"toy:{self.toy}"}.get(self.kind, f"{self.kind}:{self.path}")


@dataclass
class TrainConfig:
    """Everything that defines a training run (see docs/training.md for each field)."""

    method: Method = documented("ict", "what to train (see the methods below)")
    data: DataConfig = documented(
        DataConfig(),
        "digits | toy:8gaussians | toy:moons | toy:swissroll | folder:PATH | zip:PATH | prepared:PATH | hf:PATH | "
        "wds:PATTERN", metavar="SPEC")
    model: str = documented(
        "auto", "auto | mlp | a network preset: UNet2DModel tiny, small, base, imagenet64, lsun256; EDM ddpmpp, "
        "ncsnpp, adm-imagenet64; EDM2 edm2-img64-s|m|l|xl (auto: mlp for 2-D toys, UNet tiny up to 16 pixels, "
        "small above; image size and classes come from the data)")
    model_options: dict[str, Any] = documented(
        {}, "network constructor override, repeatable (e.g. width=64, dropout=0.1)", flag="--model-option")
    teacher: Optional[str] = documented(
        None, "output directory of an `--method edm` run, or an EDM / EDM2 snapshot .pkl (needed by cd and ect)",
        metavar="DIR")
    objective_options: dict[str, Any] = documented(
        {}, "objective option, repeatable (e.g. num_scales=18, loss=pseudo_huber; listed below)", flag="--option")
    steps: int = documented(1000, "optimizer steps")
    batch_size: int = documented(64, "global batch size over all processes")
    grad_accum: int = documented(
        1, "gradient accumulation: split each process's batch into K micro-batches, one backward each, then one "
        "optimizer step (the same update up to float rounding, with K times less activation memory)", metavar="K")
    lr: float = documented(1e-4, "learning rate")
    optimizer: OptimizerName = documented("radam", "optimizer")
    betas: tuple[float, float] = documented((0.9, 0.999), "Adam betas", cli=False)
    adam_eps: float = documented(1e-8, "Adam / RAdam epsilon (sCM uses 1e-11)")
    weight_decay: float = documented(0.0, "decoupled weight decay")
    warmup_steps: int = documented(0, "linear learning-rate warm-up steps")
    lr_schedule: LRSchedule = documented("constant", "learning-rate schedule after the warm-up")
    min_lr_ratio: float = documented(0.0, "cosine: final lr as a fraction of --lr")
    lr_decay_steps: Optional[int] = documented(
        None, "inverse_sqrt: t_ref, the step from which the lr decays as lr / sqrt(step / t_ref) (EDM2: 35,000 at "
        "batch 2048 on ImageNet-64; ECT: 2,000)", metavar="STEPS")
    grad_clip: Optional[float] = documented(1.0, "clip the global gradient norm (0 or None: no clipping)", zero_is_none=True)
    precision: Precision = documented("fp32", "autocast precision (bf16 is the fast CPU type where native)")
    ema_rates: tuple[float, ...] = documented((0.999,), "EMA decay rates of the evaluation weights")
    ema_warmup: bool = documented(True, "the EMA warm-up: each decay ramps as min(rate, (1 + k) / (10 + k)) at step k")
    export: ExportWeights = documented("ema", "which weights the pipeline gets")
    export_ema_rate: Optional[float] = documented(None, "which EMA to export (one of --ema-rates; None: the first)")
    ema_stds: tuple[float, ...] = documented(
        (), "sigma_rel of each EDM2 power-function EMA, e.g. 0.05 0.10 (exported instead of --ema-rates: see "
        "--export-ema-std)", flag="--ema-std", metavar="STD")
    ema_snapshot_every: int = documented(
        0, "save the power EMAs to OUTPUT/phema/ every N steps and at the end, for `cmkit ema reconstruct` (0: never)",
        metavar="N")
    export_ema_std: Optional[float] = documented(
        None, "which power EMA to export (one of --ema-std; None: the first, unless --export-ema-rate is given)")
    scheduler_timesteps: Optional[int] = documented(
        None, "N of the exported scheduler's Karras grid (None: the run's final N for CD / CT / iCT, else 40)")
    tau: Optional[float] = documented(
        None, "intermediate sigma of 2-step sampling saved as the pipeline's default (nearest grid point)")
    output_dir: str = documented("runs/cmkit", "output directory (a pipeline)", flag="--output", metavar="DIR")
    save_every: int = documented(1000, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = documented(2, "how many checkpoints to keep (0 keeps all)")
    sample_every: int = documented(0, "sample grid / scatter plot every N steps (0: only at the end)")
    num_samples: int = documented(64, "samples per grid")
    log_every: int = documented(10, "metrics.jsonl interval in steps")
    seed: int = documented(0, "seed for initialisation, data order and noise")
    device: Device = documented("auto", "training device")
    dist_timeout: float = documented(
        300.0, "torchrun: seconds a process waits in a collective for the others before a dead or frozen one ends "
        "the job; must exceed the longest pause of rank 0 alone (checkpoints, sample grids, export)",
        metavar="SECONDS")
    progress: bool = documented(True, "the progress bar")

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = _from_dict(DataConfig, self.data, "data")
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.ema_rates = tuple(float(r) for r in self.ema_rates)
        self.ema_stds = tuple(check_sigma_rel("ema_stds", s) for s in self.ema_stds)
        _check_literals(self)
        _check_literals(self.data, "data.")
        positive = {"steps": self.steps, "batch_size": self.batch_size, "num_samples": self.num_samples, "log_every": self.log_every}
        for name, value in positive.items():
            if not is_int(value, allow_float=True) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.grad_accum = require_int("grad_accum", self.grad_accum, 1, " (micro-batches per step; 1: no accumulation)")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"grad_accum {self.grad_accum} must divide batch_size {self.batch_size} (each process's batch is split "
                "into grad_accum equal micro-batches); choose a divisor, or a batch size that is a multiple of it"
            )
        for name in ("save_every", "sample_every", "warmup_steps", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.scheduler_timesteps is not None and self.scheduler_timesteps < 3:
            raise ValueError(f"scheduler_timesteps must be >= 3 (or None), got {self.scheduler_timesteps!r}")
        if self.tau is not None and not self.tau > 0:
            raise ValueError(f"tau must be a positive sigma (e.g. 0.8) or None, got {self.tau!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        require_positive("dist_timeout", self.dist_timeout, " (e.g. 300)", what="number of seconds")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None (no clipping), got {self.grad_clip!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        _check_inverse_sqrt(self)
        if not (isinstance(self.adam_eps, (int, float)) and not isinstance(self.adam_eps, bool) and 0 < self.adam_eps < 1):
            raise ValueError(f"adam_eps must be a small positive number (e.g. 1e-8; sCM: 1e-11), got {self.adam_eps!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        bad = [r for r in self.ema_rates if not 0.0 <= r < 1.0]
        if bad:
            raise ValueError(f"EMA rates must lie in [0, 1), got {bad}")
        if self.export == "ema" and not self.ema_rates and not self.ema_stds:
            raise ValueError("export='ema' needs at least one EMA rate (or EMA std); add ema_rates (or ema_stds) or "
                             "export the online weights")
        _check_power_ema(self)
        if self.export_ema_rate is not None and self.export_ema_rate not in self.ema_rates:
            raise ValueError(f"export_ema_rate {self.export_ema_rate} is not one of ema_rates {list(self.ema_rates)}")
        if self.method in TEACHER_METHODS and not self.teacher:
            raise ValueError(f"method {self.method!r} starts from a teacher; pass the teacher's directory (--teacher DIR)")

    @property
    def exported_ema_rate(self) -> Optional[float]:
        """The EMA rate whose weights are exported (None: the online weights or a power EMA)."""
        if self.export == "online" or self.exported_ema_std is not None:
            return None
        return self.export_ema_rate if self.export_ema_rate is not None else self.ema_rates[0]

    @property
    def exported_ema_std(self) -> Optional[float]:
        """The power EMA whose weights are exported: ``export_ema_std``, else the first of ``ema_stds`` unless an
        ``export_ema_rate`` is chosen (None: the online weights or a classic EMA)."""
        if self.export == "online" or self.export_ema_rate is not None:
            return None
        return self.export_ema_std if self.export_ema_std is not None else next(iter(self.ema_stds), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (the data config nested)."""
        d = dataclasses.asdict(self)
        d["betas"], d["ema_rates"] = list(self.betas), list(self.ema_rates)
        d["ema_stds"] = list(self.ema_stds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from :meth:`to_dict` output; unknown keys are an error."""
        return _from_dict(cls, d, "")

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the config as JSON (atomically)."""
        p = Path(path)
        atomic_write_text(p, json.dumps(self.to_dict(), indent=2) + "\n")
        return p

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "TrainConfig":
        """Read a config written by :meth:`to_json` (or by hand)."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"training config {p} not found")
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{p} is not valid JSON: {err}") from err

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _from_dict(cls: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{where or 'the training config'} must be a JSON object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(unknown)} in {where or 'the training config'}; known keys: {', '.join(sorted(names))}"
        )
    return cls(**d)


def _check_inverse_sqrt(config: TrainConfig) -> None:
    """``lr_decay_steps`` (t_ref) is required by, and only by, the inverse-square-root schedule; it has no floor."""
    if config.lr_schedule != "inverse_sqrt":
        if config.lr_decay_steps is not None:
            raise ValueError(
                f"lr_decay_steps applies to lr_schedule 'inverse_sqrt' only (this run's is {config.lr_schedule!r}); "
                "drop it, or set lr_schedule to inverse_sqrt"
            )
        return
    if config.lr_decay_steps is None:
        raise ValueError("lr_schedule 'inverse_sqrt' needs lr_decay_steps (t_ref, the step where the decay starts; "
                         "EDM2 uses 35,000 on ImageNet-64, ECT 2,000)")
    config.lr_decay_steps = require_int("lr_decay_steps", config.lr_decay_steps, 1, " (t_ref in optimizer steps)")
    if config.min_lr_ratio:
        raise ValueError(f"min_lr_ratio (now {config.min_lr_ratio}) is the cosine's final lr; inverse_sqrt has none: "
                         "set min_lr_ratio to 0")


def _check_power_ema(config: TrainConfig) -> None:
    """The power-EMA fields: distinct stds, snapshots only of stds, an exported std among them."""
    if len(set(config.ema_stds)) != len(config.ema_stds):
        raise ValueError(f"ema_stds must be distinct, got {list(config.ema_stds)}")
    if require_int("ema_snapshot_every", config.ema_snapshot_every, 0, " (steps; 0: no snapshots)") and not config.ema_stds:
        raise ValueError("ema_snapshot_every saves power EMAs, but there are none; add ema_stds (--ema-std 0.05 0.10) "
                         "or set it to 0")
    if config.export_ema_std is not None:
        if config.export_ema_std not in config.ema_stds:
            raise ValueError(f"export_ema_std {config.export_ema_std} is not one of ema_stds {list(config.ema_stds)}")
        if config.export_ema_rate is not None:
            raise ValueError("export_ema_rate and export_ema_std both choose the exported weights; give only one")


def _literal_args(tp: Any) -> Optional[tuple[Any, ...]]:
    """The allowed values of a ``Literal`` (or ``Optional[Literal]``) annotation, else None."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return typing.get_args(tp)
    if origin is Union:
        for arg in typing.get_args(tp):
            values = _literal_args(arg)
            if values is not None:
                return values + ((None,) if type(None) in typing.get_args(tp) else ())
    return None


def _check_literals(obj: Any, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        allowed = _literal_args(hints[f.name])
        if allowed is not None:
            check_choice(prefix + f.name, getattr(obj, f.name), allowed)
