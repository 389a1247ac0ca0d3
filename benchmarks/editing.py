"""Zero-shot editing quality on held-out digits: consistency-model edits against simple baselines.

Prints one table of MSE and PSNR (pixels in [0, 1]; PSNR = 10 log10(1 / MSE)) on the generated region:

* inpainting (centre square, right half): mean-fill and nearest-neighbour fill;
* super-resolution (factors 2 and 4, low-res = patch means): bicubic and nearest upsampling;
* denoising (sigma 0.2, 0.5, 1.0 in [-1, 1] units): the noisy input and the best Gaussian blur
  (its width tuned on these very images, so the baseline is optimistic);
* colorization (needs an RGB model, ``--rgb-model``): the grey image and a per-pixel linear luma->colour fit;
* stroke-guided editing (SDEdit) from two-tone stroke paintings of the held-out digits: FD-digits (realism)
  and digit-classifier accuracy (faithfulness to the painted digit), edits against the paintings themselves.

"CM" is one edit; "CM mean of K" averages K edits with different noise (an estimate of the posterior
mean, which is what MSE rewards). Panels (input / baseline / CM / truth) go to ``--images``.

    python benchmarks/editing.py --model DIR [--rgb-model DIR] [--n 360] [--images docs/images]
    python benchmarks/editing.py --make-rgb-data DIR   # the coloured-digits image folder for `cmkit train`
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cmkit.data.digits import load_digits
from cmkit.editing import downsample

#: one fixed hue per digit class (RGB in [0, 1]); the coloured-digits data set draws class k in COLOURS[k].
COLOURS = np.array(
    [
        [1.00, 0.25, 0.20], [1.00, 0.60, 0.10], [0.95, 0.90, 0.15], [0.45, 0.90, 0.20], [0.15, 0.85, 0.65],
        [0.20, 0.75, 1.00], [0.30, 0.40, 1.00], [0.65, 0.30, 1.00], [1.00, 0.30, 0.80], [0.90, 0.90, 0.90],
    ],
    dtype=np.float32,
)


# ----- data ----------------------------------------------------------------------------------------------------
def coloured_digits(split: str, resolution: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Digits drawn in their class colour (brightness jittered by +-20%) on black, as RGB in [-1, 1]."""
    gray, labels = load_digits(split, resolution)  # type: ignore[arg-type]
    ink = (gray + 1) / 2  # [N, 1, H, W] in [0, 1]
    g = torch.Generator().manual_seed(seed)
    gain = 0.8 + 0.4 * torch.rand(len(labels), 1, 1, 1, generator=g)
    colour = torch.from_numpy(COLOURS)[labels][:, :, None, None]
    rgb = (ink * colour * gain).clamp(0, 1)
    return rgb * 2 - 1, labels


def colour_class(rgb: Tensor) -> Tensor:
    """The class whose colour is closest in direction (cosine) to each image's ink-weighted mean colour."""
    unit = (rgb + 1) / 2
    ink = unit.mean(dim=1, keepdim=True)
    mean = (unit * ink).sum(dim=(2, 3)) / ink.sum(dim=(2, 3)).clamp_min(1e-8)
    return (F.normalize(mean, dim=1) @ F.normalize(torch.from_numpy(COLOURS), dim=1).T).argmax(dim=1)


def make_rgb_data(directory: Path, resolution: int) -> None:
    """Write the training split of the coloured digits as PNGs, one folder per class (for `cmkit train`)."""
    from PIL import Image

    images, labels = coloured_digits("train", resolution)
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    for i, (p, c) in enumerate(zip(pixels, labels.tolist())):
        out = directory / str(c)
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(p).save(out / f"{i:04d}.png")
    print(f"wrote {len(pixels)} images to {directory}")


# ----- baselines -----------------------------------------------------------------------------------------------
def mean_fill(y: Tensor, mask: Tensor) -> Tensor:
    """Fill the masked pixels with the mean of each image's known pixels (per channel)."""
    keep = 1 - mask
    mean = (y * keep).sum(dim=(2, 3), keepdim=True) / keep.sum(dim=(2, 3), keepdim=True)
    return torch.where(mask.bool(), mean.expand_as(y), y)


def nearest_fill(y: Tensor, mask: Tensor) -> Tensor:
    """Fill each masked pixel with its nearest known pixel (Euclidean distance)."""
    from scipy.ndimage import distance_transform_edt

    m = mask[0, 0].cpu().numpy().astype(bool)
    _, (ri, ci) = distance_transform_edt(m, return_indices=True)
    return y[:, :, torch.from_numpy(ri), torch.from_numpy(ci)]


def upsample(low: Tensor, factor: int, mode: str) -> Tensor:
    """Bicubic or nearest upsampling, clamped to [-1, 1]."""
    kwargs = {"align_corners": False} if mode == "bicubic" else {}
    return F.interpolate(low, scale_factor=factor, mode=mode, **kwargs).clamp(-1, 1)


def gaussian_blur(x: Tensor, width: float) -> Tensor:
    """Separable Gaussian blur of standard deviation ``width`` pixels, reflect-padded."""
    radius = max(1, math.ceil(3 * width))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / width) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad = min(radius, x.shape[-1] - 1)
    if pad < radius:  # small images: crop the kernel to what reflect padding allows
        k = k[radius - pad : radius + pad + 1] / k[radius - pad : radius + pad + 1].sum()
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def luma_colour_fit(train_rgb: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares per-channel ``rgb = a * luma + b`` over all training pixels (a colour-blind colorizer)."""
    from cmkit.editing.inputs import to_luma

    luma = to_luma(train_rgb).flatten()
    design = torch.stack([luma, torch.ones_like(luma)], dim=1).double()
    target = train_rgb.permute(1, 0, 2, 3).reshape(3, -1).T.double()
    coef = torch.linalg.lstsq(design, target).solution.float()  # [2, 3]
    return coef[0], coef[1]


# ----- metrics and pictures ------------------------------------------------------------------------------------
def mse(a: Tensor, b: Tensor, region: Tensor | None = None) -> float:
    """Mean squared error in [0, 1] pixel units over ``region`` (a 0/1 mask; default everything)."""
    d = ((a - b) / 2) ** 2
    if region is None:
        return float(d.mean())
    region = region.expand_as(d)
    return float((d * region).sum() / region.sum())


def psnr(m: float) -> float:
    """PSNR in dB of a mean squared error in [0, 1] pixel units."""
    return 10 * math.log10(1 / max(m, 1e-12))


def save_panel(rows: list[tuple[str, Tensor]], path: Path, cols: int = 8, scale: int | None = None) -> None:
    """A small PNG: one row per (label, [B, C, H, W] images in [-1, 1]), ``cols`` examples, labels on the left."""
    from PIL import Image, ImageDraw

    h, w = rows[0][1].shape[2:]
    scale = scale or max(1, 32 // h)
    label_w, pad = 64, 2
    cell_w, cell_h = w * scale + pad, h * scale + pad
    panel = Image.new("RGB", (label_w + cols * cell_w, len(rows) * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for r, (label, images) in enumerate(rows):
        draw.text((2, r * cell_h + cell_h // 2 - 5), label, fill=(0, 0, 0))
        for c in range(min(cols, len(images))):
            img = ((images[c].clamp(-1, 1) + 1) * 127.5).round().byte()
            img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
            tile = Image.fromarray(img.permute(1, 2, 0).cpu().numpy()).resize((w * scale, h * scale), Image.NEAREST)
            panel.paste(tile, (label_w + c * cell_w, r * cell_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    panel.save(path, optimize=True)


# ----- the tasks -----------------------------------------------------------------------------------------------
class Bench:
    """Runs each task on held-out images and collects table rows."""

    def __init__(self, pipe, args: argparse.Namespace) -> None:
        self.pipe, self.args = pipe, args
        self.rows: list[tuple[str, str, float]] = []
        self.quality: list[tuple[str, str, float, float]] = []
        c, self.res, _ = pipe.sample_shape
        self.y, self.labels = load_digits("test", self.res)
        self.y, self.labels = self.y[: args.n], self.labels[: args.n]
        self.images = Path(args.images) if args.images else None
        self.conditional = pipe.num_classes is not None

    def _labels(self, labels: Tensor) -> Tensor | None:
        return labels if self.conditional else None

    def _edits(self, method: str, *inputs, samples: int = 1, steps: int | None = None, cond: bool = True) -> list[Tensor]:
        """``samples`` independent edits of the whole set, each in [-1, 1], in batches."""
        outs = []
        for k in range(samples):
            parts = []
            for start in range(0, self.args.n, self.args.batch):
                sl = slice(start, start + self.args.batch)
                g = torch.Generator().manual_seed(self.args.seed + 1000 * k + start)
                call_inputs = [x[sl] if isinstance(x, Tensor) and len(x) == len(self.y) else x for x in inputs]
                out = getattr(self.pipe, method)(
                    *call_inputs, num_inference_steps=steps, generator=g, output_type="pt",
                    class_labels=self._labels(self.labels[sl]) if cond else None,
                ).images
                parts.append(out * 2 - 1)
            outs.append(torch.cat(parts))
        return outs

    def add(self, task: str, method: str, m: float) -> None:
        self.rows.append((task, method, m))
        print(f"  {task:<28} {method:<30} MSE {m:.5f}  PSNR {psnr(m):6.2f} dB", file=sys.stderr, flush=True)

    def add_cm(self, task: str, outs: list[Tensor], truth: Tensor, region: Tensor | None) -> Tensor:
        self.add(task, "CM", mse(outs[0], truth, region))
        if len(outs) > 1 and not all(torch.equal(o, outs[0]) for o in outs[1:]):  # one step is deterministic
            self.add(task, f"CM mean of {len(outs)}", mse(torch.stack(outs).mean(0), truth, region))
        return outs[0]

    def inpainting(self) -> None:
        r = self.res
        masks = {"centre square": torch.zeros(1, 1, r, r), "right half": torch.zeros(1, 1, r, r)}
        masks["centre square"][..., r // 4 : 3 * r // 4, r // 4 : 3 * r // 4] = 1
        masks["right half"][..., r // 2 :] = 1
        for name, mask in masks.items():
            task = f"inpaint {name}"
            outs = self._edits("inpaint", (self.y + 1) / 2, mask, samples=self.args.samples, steps=self.args.steps)
            cm = self.add_cm(task, outs, self.y, mask)
            mf, nn_ = mean_fill(self.y, mask), nearest_fill(self.y, mask)
            self.add(task, "mean-fill", mse(mf, self.y, mask))
            self.add(task, "nearest-neighbour fill", mse(nn_, self.y, mask))
            if self.images:
                shown = torch.where(mask.bool(), torch.full_like(self.y, 0.0), self.y)
                slug = name.replace(" ", "_")
                save_panel([("input", shown), ("nearest", nn_), ("CM", cm), ("truth", self.y)],
                           self.images / f"editing_inpaint_{slug}.png")

    def super_resolution(self) -> None:
        for factor in (2, 4):
            if self.res % factor or self.res // factor < 1:
                continue
            task = f"super-resolution x{factor}"
            low = downsample(self.y, factor)
            outs = self._edits("super_resolve", (low + 1) / 2, factor, samples=self.args.samples,
                               steps=self.args.steps)
            cm = self.add_cm(task, outs, self.y, None)
            bic = upsample(low, factor, "bicubic")
            self.add(task, "bicubic", mse(bic, self.y))
            self.add(task, "nearest", mse(upsample(low, factor, "nearest"), self.y))
            if self.images:
                save_panel([("low-res", upsample(low, factor, "nearest")), ("bicubic", bic), ("CM", cm),
                            ("truth", self.y)], self.images / f"editing_super_resolve_x{factor}.png")

    def denoising(self) -> None:
        g = torch.Generator().manual_seed(self.args.seed + 7)
        noise = torch.randn(self.y.shape, generator=g)
        for sigma in (0.2, 0.5, 1.0):
            task = f"denoise sigma={sigma}"
            noisy = self.y + sigma * noise
            outs = self._edits("denoise_latents", noisy, sigma, samples=self.args.samples,
                               steps=self.args.denoise_steps)
            cm = self.add_cm(task, outs, self.y, None)
            self.add(task, "noisy input", mse(noisy.clamp(-1, 1), self.y))
            blurs = {w: gaussian_blur(noisy, w).clamp(-1, 1) for w in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)}
            best = min(blurs, key=lambda w: mse(blurs[w], self.y))
            self.add(task, f"best Gaussian blur (width {best})", mse(blurs[best], self.y))
            if self.images and sigma == 0.5:
                save_panel([("noisy", noisy), ("blur", blurs[best]), ("CM", cm), ("truth", self.y)],
                           self.images / "editing_denoise.png")

    def stroke_editing(self) -> None:
        from cmkit.metrics.fd_digits import classifier_accuracy, fd_digits

        # a "stroke painting": each 8x8 cell of the digit as flat ink or paper (a two-tone drawing, no grey levels)
        cell = self.res // 8
        strokes = upsample(downsample(self.y, cell), cell, "nearest") if cell > 1 else self.y
        strokes = torch.where(strokes > 0, 1.0, -1.0)
        task = "stroke-edit (SDEdit)"
        note = " (true class label given)" if self.conditional else ""
        self.add_quality(task, "stroke painting", fd_digits(strokes), classifier_accuracy(strokes, self.labels))
        shown = []
        for sigma in self.args.stroke_sigmas:
            out = self._edits("stroke_edit", (strokes + 1) / 2, sigma, steps=self.args.stroke_steps)[0]
            self.add_quality(task, f"CM sigma={sigma}{note}", fd_digits(out), classifier_accuracy(out, self.labels))
            shown.append((f"s={sigma}", out))
        if self.images:
            save_panel([("strokes", strokes), *shown, ("truth", self.y)], self.images / "editing_stroke.png")

    def add_quality(self, task: str, method: str, fd: float, acc: float) -> None:
        self.quality.append((task, method, fd, acc))
        print(f"  {task:<28} {method:<30} FD-digits {fd:7.2f}  accuracy {acc:.3f}", file=sys.stderr, flush=True)

    def interpolation(self) -> None:
        if not self.images:
            return
        rows = []
        for k, (i, j) in enumerate([(0, 1), (2, 3)]):
            g = torch.Generator().manual_seed(self.args.seed + k)
            label = int(self.labels[i]) if self.conditional else None
            noise = self.pipe.interpolate(num_images=8, generator=g, output_type="pt", class_labels=label).images
            rows.append((f"noise {k + 1}", noise * 2 - 1))
            a, b = (self.y[i : i + 1] + 1) / 2, (self.y[j : j + 1] + 1) / 2
            imgs = self.pipe.interpolate(a, b, num_images=8, sigma=self.args.interp_sigma, generator=g,
                                         output_type="pt", class_labels=label).images
            rows.append((f"images {k + 1}", imgs * 2 - 1))
        save_panel(rows, self.images / "editing_interpolate.png")


def colorization(rgb_pipe, args: argparse.Namespace, rows: list, images: Path | None, diagnostics: list) -> None:
    """Colorize held-out coloured digits with the RGB model; baselines: grey and the luma->colour fit."""
    from cmkit.editing.inputs import to_luma

    res = rgb_pipe.sample_shape[1]
    truth, labels = coloured_digits("test", res, seed=1)
    truth, labels = truth[: args.n], labels[: args.n]
    gray = to_luma(truth)
    outs = []
    for k in range(args.samples):
        parts = []
        for start in range(0, len(truth), args.batch):
            g = torch.Generator().manual_seed(args.seed + 1000 * k + start)
            cond = labels[start : start + args.batch] if rgb_pipe.num_classes is not None else None
            out = rgb_pipe.colorize((gray[start : start + args.batch] + 1) / 2, num_inference_steps=args.steps,
                                    generator=g, output_type="pt", class_labels=cond).images
            parts.append(out * 2 - 1)
        outs.append(torch.cat(parts))
    task = "colorize (coloured digits)"
    results = [(task, "CM", mse(outs[0], truth))]
    if len(outs) > 1 and not all(torch.equal(o, outs[0]) for o in outs[1:]):
        results.append((task, f"CM mean of {len(outs)}", mse(torch.stack(outs).mean(0), truth)))
    grey = gray.expand(-1, 3, -1, -1)
    results.append((task, "grey (luma replicated)", mse(grey.clamp(-1, 1), truth)))
    a, b = luma_colour_fit(coloured_digits("train", res)[0])
    fit = (gray * a.view(1, 3, 1, 1) + b.view(1, 3, 1, 1)).clamp(-1, 1)
    results.append((task, "linear luma->colour fit", mse(fit, truth)))
    for r in results:
        rows.append(r)
        print(f"  {r[0]:<28} {r[1]:<30} MSE {r[2]:.5f}  PSNR {psnr(r[2]):6.2f} dB", file=sys.stderr)
    # Why a single edit can lose to grey on MSE: does the model pick the class colour, and do its own samples?
    from cmkit.metrics.classifier import load_digits_classifier

    diagnostics.append(("colour = class colour: held-out truth (sanity check)", float((colour_class(truth) == labels).float().mean())))
    diagnostics.append(("colour = class colour: CM colorizations", float((colour_class(outs[0]) == labels).float().mean())))
    g = torch.Generator().manual_seed(args.seed)
    samples = rgb_pipe(batch_size=len(truth), num_inference_steps=2, generator=g, output_type="pt").images * 2 - 1
    with torch.no_grad():
        from cmkit.metrics.classifier import to_classifier_input

        drawn = load_digits_classifier()(to_classifier_input(to_luma(samples).clamp(-1, 1))).argmax(dim=1)
    diagnostics.append(("colour = colour of the drawn digit: the model's own 2-step samples",
                        float((colour_class(samples) == drawn).float().mean())))
    for name, value in diagnostics:
        print(f"  {name}: {value:.3f}", file=sys.stderr)
    if images:
        save_panel([("grey", grey), ("linear fit", fit), ("CM", outs[0]), ("truth", truth)],
                   images / "editing_colorize.png")


def print_table(rows: list[tuple[str, str, float]], quality: list[tuple[str, str, float, float]],
                diagnostics: list[tuple[str, float]]) -> None:
    """Markdown tables: task, method, MSE, PSNR; then FD-digits and classifier accuracy for SDEdit."""
    print("| task | method | MSE | PSNR (dB) |")
    print("|---|---|---|---|")
    for task, method, value in rows:
        print(f"| {task} | {method} | {value:.5f} | {psnr(value):.2f} |")
    if quality:
        print("\n| task | input | FD-digits (lower = more realistic) | classifier accuracy (faithfulness) |")
        print("|---|---|---|---|")
        for task, method, fd, acc in quality:
            print(f"| {task} | {method} | {fd:.2f} | {acc:.3f} |")
    if diagnostics:
        print("\n| colorization diagnostic | fraction |")
        print("|---|---|")
        for name, value in diagnostics:
            print(f"| {name} | {value:.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="digits pipeline directory (1-channel)")
    parser.add_argument("--rgb-model", help="pipeline trained on the coloured digits (for colorization)")
    parser.add_argument("--make-rgb-data", metavar="DIR", help="write the coloured-digits training folder and exit")
    parser.add_argument("--rgb-resolution", type=int, default=8)
    parser.add_argument("--n", type=int, default=360, help="held-out images per task (max 360)")
    parser.add_argument("--batch", type=int, default=120)
    parser.add_argument("--steps", type=int, default=None, help="steps for inpaint/super-resolve/colorize")
    parser.add_argument("--denoise-steps", type=int, default=None)
    parser.add_argument("--stroke-steps", type=int, default=None)
    parser.add_argument("--stroke-sigmas", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--interp-sigma", type=float, default=2.0)
    parser.add_argument("--samples", type=int, default=4, help="edits per image for 'CM mean of K'")
    parser.add_argument("--tasks", nargs="+", default=["inpaint", "super", "denoise", "stroke", "interp", "color"])
    parser.add_argument("--images", default="docs/images", help="directory for the PNG panels ('' for none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.make_rgb_data:
        make_rgb_data(Path(args.make_rgb_data), args.rgb_resolution)
        return 0
    if not args.model and not args.rgb_model:
        parser.error("pass --model DIR (and/or --rgb-model DIR)")
    from cmkit.pipeline import ConsistencyModelPipeline

    images = Path(args.images) if args.images else None
    rows: list = []
    quality: list = []
    diagnostics: list = []
    t0 = time.perf_counter()
    if args.model:
        pipe = ConsistencyModelPipeline.from_pretrained(args.model)
        bench = Bench(pipe, args)
        for name, fn in [("inpaint", bench.inpainting), ("super", bench.super_resolution),
                         ("denoise", bench.denoising), ("stroke", bench.stroke_editing),
                         ("interp", bench.interpolation)]:
            if name in args.tasks:
                fn()
        rows += bench.rows
        quality += bench.quality
    if args.rgb_model and "color" in args.tasks:
        colorization(ConsistencyModelPipeline.from_pretrained(args.rgb_model), args, rows, images, diagnostics)
    print_table(rows, quality, diagnostics)
    print(f"\n{args.n} held-out images per task; {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
