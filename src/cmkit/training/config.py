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

from ..data import DataKind
from ..data.folder import ResizeMode
from .._validate import check_choice, is_int, require_int, require_positive
from ..fields import documented
from ..io.atomic import atomic_write_text
from .objectives import TEACHER_METHODS, Method

Precision = Literal["fp32", "bf16", "fp16"]
OptimizerName = Literal["radam", "adam"]
LRSchedule = Literal["constant", "cosine"]
ExportWeights = Literal["ema", "online"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass
class DataConfig:
    """Which data to train on: the embedded ``digits``, a 2-D ``toy`` set, or an image ``folder``."""

    kind: DataKind = documented("digits", "set by --data", cli=False)
    toy: Optional[str] = documented(None, "set by --data toy:NAME", cli=False)
    path: Optional[str] = documented(None, "set by --data folder:PATH", cli=False)
    resolution: Optional[int] = documented(
        None, "image size in pixels (digits: a multiple of 8; folders: required unless --resize none)")
    resize: ResizeMode = documented("crop", "folder images: centre crop, stretch, or keep")
    flip: bool = documented(False, "random horizontal flips")
    channels: Optional[Literal[1, 3]] = documented(
        None, "folder images: 1 (grayscale) or 3 (RGB; None means 3); the digits are grayscale, toys are points")
    class_labels: Optional[bool] = documented(
        None, "use class labels (digits classes, folder sub-folders); None: when the data have them")

    @classmethod
    def parse(cls, spec: str, **options: Any) -> "DataConfig":
        """From a spec ``digits``, ``toy:8gaussians`` / ``toy:moons`` / ``toy:swissroll`` or ``folder:PATH``."""
        kind, _, arg = spec.partition(":")
        if kind == "digits" and not arg:
            return cls(kind="digits", **options)
        if kind == "toy" and arg:
            return cls(kind="toy", toy=arg, **options)
        if kind == "folder" and arg:
            return cls(kind="folder", path=arg, **options)
        raise ValueError(
            f"cannot read the data spec {spec!r}; use digits, toy:8gaussians, toy:moons, toy:swissroll or folder:PATH"
        )

    def spec(self) -> str:
        """The short spec string (``digits``, ``toy:NAME`` or ``folder:PATH``)."""
        return {"digits": "digits", "toy": f"toy:{self.toy}", "folder": f"folder:{self.path}"}[self.kind]


@dataclass
class TrainConfig:
    """Everything that defines a training run (see docs/training.md for each field)."""

    method: Method = documented("ict", "what to train (see the methods below)")
    data: DataConfig = documented(
        DataConfig(), "digits | toy:8gaussians | toy:moons | toy:swissroll | folder:PATH", metavar="SPEC")
    model: str = documented(
        "auto", "auto | mlp | a UNet preset: tiny, small, base, imagenet64, lsun256 (auto: mlp for 2-D toys, UNet "
        "tiny up to 16 pixels, small above)")
    model_options: dict[str, Any] = documented(
        {}, "network constructor override, repeatable (e.g. width=64, dropout=0.1)", flag="--model-option")
    teacher: Optional[str] = documented(
        None, "output directory of an `--method edm` run (needed by cd and ect)", metavar="DIR")
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
    weight_decay: float = documented(0.0, "decoupled weight decay")
    warmup_steps: int = documented(0, "linear learning-rate warm-up steps")
    lr_schedule: LRSchedule = documented("constant", "learning-rate schedule after the warm-up")
    min_lr_ratio: float = documented(0.0, "cosine: final lr as a fraction of --lr")
    grad_clip: Optional[float] = documented(1.0, "clip the global gradient norm (0 or None: no clipping)", zero_is_none=True)
    precision: Precision = documented("fp32", "autocast precision (bf16 is the fast CPU type where native)")
    ema_rates: tuple[float, ...] = documented((0.999,), "EMA decay rates of the evaluation weights")
    ema_warmup: bool = documented(True, "the EMA warm-up: each decay ramps as min(rate, (1 + k) / (10 + k)) at step k")
    export: ExportWeights = documented("ema", "which weights the pipeline gets")
    export_ema_rate: Optional[float] = documented(None, "which EMA to export (one of --ema-rates; None: the first)")
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
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        bad = [r for r in self.ema_rates if not 0.0 <= r < 1.0]
        if bad:
            raise ValueError(f"EMA rates must lie in [0, 1), got {bad}")
        if self.export == "ema" and not self.ema_rates:
            raise ValueError("export='ema' needs at least one EMA rate; add ema_rates or export the online weights")
        if self.export_ema_rate is not None and self.export_ema_rate not in self.ema_rates:
            raise ValueError(f"export_ema_rate {self.export_ema_rate} is not one of ema_rates {list(self.ema_rates)}")
        if self.method in TEACHER_METHODS and not self.teacher:
            raise ValueError(f"method {self.method!r} starts from a teacher; pass the teacher's directory (--teacher DIR)")

    @property
    def exported_ema_rate(self) -> Optional[float]:
        """The EMA rate whose weights are exported (None: the online weights)."""
        if self.export == "online":
            return None
        return self.export_ema_rate if self.export_ema_rate is not None else self.ema_rates[0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (the data config nested)."""
        d = dataclasses.asdict(self)
        d["betas"], d["ema_rates"] = list(self.betas), list(self.ema_rates)
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
