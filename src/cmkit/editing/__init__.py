"""Zero-shot editing with consistency models (Song et al. 2023, Algorithm 4).

:func:`edit` is the one general routine; :mod:`~cmkit.editing.presets` defines the tasks (inpainting,
colorization, super-resolution, denoising, interpolation, stroke-guided editing) as ``(A, Omega, start)``;
:mod:`~cmkit.editing.pipeline_edits` runs them with a pipeline (whose editing methods delegate there).
"""

from .algorithm import check_mask, check_sigmas, edit
from .presets import (
    EditTask,
    colorization,
    denoising,
    downsample,
    editing_sigmas,
    inpainting,
    interpolation,
    slerp,
    stroke_editing,
    super_resolution,
)
from .transforms import ColorTransform, IdentityTransform, OrthogonalTransform, PatchTransform, orthonormal_basis
