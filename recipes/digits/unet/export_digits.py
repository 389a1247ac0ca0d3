"""Write the 1437 training digits (cmkit.data.digits, the fixed split) as 8x8 grayscale PNGs, one sub-folder per
class (``OUT/0/0000.png`` ... ``OUT/9/...``), so the UNet recipe trains through the streaming image path
(``--data folder:OUT`` or ``cmkit data prepare OUT`` -> ``--data prepared:...``) instead of ``--data digits``.

The digits' 17 grey levels v = 0..16 become round(255 v / 16): the folder reader's x / 127.5 - 1 then differs
from ``load_digits``' v / 8 - 1 by at most 1/255. The held-out 360 images are not written (FD-digits uses them).

    python recipes/digits/unet/export_digits.py runs/digits/unet/png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from cmkit.data.digits import NUM_CLASSES, load_digits


def export_digits(out: Path) -> int:
    """Write the training split under ``out`` (which must not exist yet); returns the number of images."""
    from PIL import Image

    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or pass a new folder")
    images, labels = load_digits("train", resolution=8)
    pixels = ((images[:, 0].numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    tmp = out.with_name(out.name + ".partial")
    for c in range(NUM_CLASSES):
        (tmp / str(c)).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(pixels, labels.tolist())):
        Image.fromarray(image, mode="L").save(tmp / str(label) / f"{i:04d}.png")
    tmp.rename(out)  # complete or absent
    return len(labels)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create (one sub-folder per class)")
    args = parser.parse_args(argv)
    print(f"wrote {export_digits(args.out)} digits to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
