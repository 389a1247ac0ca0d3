"""``from_pretrained`` / ``save_pretrained`` for cmkit networks, in diffusers' model-directory layout.

A model directory holds ``config.json`` (the constructor arguments, see :mod:`cmkit.config`) and the weights as
``diffusion_pytorch_model.safetensors`` or, read only through ``torch.load(weights_only=True)``,
``diffusion_pytorch_model.bin``. Any ``nn.Module`` that is also a :class:`~cmkit.config.ConfigMixin` gains these
methods by inheriting :class:`PretrainedMixin`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, TypeVar, Union

import torch
from torch import Tensor, nn

from ..hardware import DTypeLike, parse_dtype
from ..io.atomic import atomic_path
from ..io.hub import resolve_pretrained
from ..io.weights import WEIGHTS_NAMES, find_weights_file, load_state_dict, save_state_dict

M = TypeVar("M", bound="PretrainedMixin")
def resolve_dtype_args(torch_dtype: DTypeLike, dtype: DTypeLike) -> Optional[torch.dtype]:
    """Merge diffusers' ``torch_dtype`` and newer ``dtype`` spellings; both given and different is an error."""
    a, b = parse_dtype(torch_dtype, "torch_dtype"), parse_dtype(dtype, "dtype")
    if a is not None and b is not None and a != b:
        raise ValueError(f"torch_dtype={a} and dtype={b} disagree; pass only one of them")
    return a if a is not None else b


class PretrainedMixin:
    """Adds ``dtype``, ``device``, ``save_pretrained`` and ``from_pretrained`` to a ConfigMixin ``nn.Module``."""

    #: the class name diffusers writes for this model (checked against ``_class_name`` on load).
    saved_class_name: Optional[str] = None
    #: whether :meth:`from_pretrained` returns the model in eval mode (diffusers' behaviour) or in train mode.
    load_in_eval_mode: bool = True

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating-point parameter."""
        for p in self.parameters():  # type: ignore[attr-defined]
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        """The device of the first parameter."""
        for p in self.parameters():  # type: ignore[attr-defined]
            return p.device
        return torch.device("cpu")

    def save_pretrained(self, save_directory: Union[str, os.PathLike], safe_serialization: bool = True) -> Path:
        """Write ``config.json`` and the weights (safetensors, or a pickled ``.bin``) into ``save_directory``."""
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{directory} is a file; pass a directory to save the model into")
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        if safe_serialization:
            save_state_dict(state, directory / WEIGHTS_NAMES[0])
        else:
            with atomic_path(directory / WEIGHTS_NAMES[1]) as tmp:
                torch.save(state, tmp)
        self.save_config(directory)  # type: ignore[attr-defined]
        return directory

    @classmethod
    def convert_legacy_state_dict(cls, state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """Rename keys written by older versions of the format (none by default)."""
        return state_dict

    @classmethod
    def from_pretrained(
        cls: type[M],
        pretrained_model_name_or_path: Union[str, os.PathLike],
        subfolder: Optional[str] = None,
        torch_dtype: DTypeLike = None,
        dtype: DTypeLike = None,
    ) -> M:
        """Load a model directory (or hub id); float weights are cast to ``torch_dtype``/``dtype`` (default float32)."""
        target = resolve_dtype_args(torch_dtype, dtype) or torch.float32
        patterns = None
        if subfolder:
            names = (cls.config_name, *WEIGHTS_NAMES)  # type: ignore[attr-defined]
            patterns = [f"{subfolder}/{name}" for name in names]
        root = resolve_pretrained(pretrained_model_name_or_path, allow_patterns=patterns)
        directory = root / subfolder if subfolder else root
        name = cls.config_name  # type: ignore[attr-defined]
        if not subfolder and not (directory / name).is_file() and (directory / "unet" / name).is_file():
            raise FileNotFoundError(
                f"{directory} looks like a pipeline directory (it has unet/); pass subfolder='unet' to load its UNet"
            )
        config = cls.load_config(directory)  # type: ignore[attr-defined]
        expected = cls.saved_class_name or cls.__name__
        found = config.get("_class_name")
        if found is not None and found != expected:
            raise ValueError(
                f"the config in {directory} describes {_article(found)} {found}, not {_article(expected)} {expected}"
            )
        with torch.device("meta"):
            model = cls.from_config(config)  # type: ignore[attr-defined]
        weights_file = find_weights_file(directory)
        state = cls.convert_legacy_state_dict(load_state_dict(weights_file), model)
        load_exact_state_dict(model, state, source=str(weights_file))
        model.to(dtype=target)
        return model.eval() if cls.load_in_eval_mode else model


def load_exact_state_dict(model: nn.Module, state: Mapping[str, Tensor], source: str = "the state dict") -> None:
    """Load ``state`` into ``model`` (possibly on the meta device) requiring identical keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: {tuple(state[k].shape)} in {source} vs {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_head(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_head(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_head(mismatched)}")
    if problems:
        raise ValueError(
            f"the weights in {source} do not fit the {type(model).__name__} built from its config: "
            + "; ".join(problems)
            + ". Check that config.json belongs to these weights."
        )
    on_meta = any(p.is_meta for p in model.parameters())
    model.load_state_dict(dict(state), strict=True, assign=on_meta)


def _article(name: str) -> str:
    """"a" or "an" by the first sound of a class name: "an MLPNet", "an Encoder", "a UNet2DModel", "a Denoiser"."""
    spelled = len(name) > 1 and name[1].isupper()  # an acronym's first letter is said by its name: "em-el-pee"
    first = name[:1].upper()
    vowel_sound = first in "AEIO" or (first == "U" and not spelled) or (spelled and first in "FHLMNRSX")
    return "an" if vowel_sound else "a"


def _head(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")

