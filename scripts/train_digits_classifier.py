"""Train the FD-digits classifier on the fixed train split of the embedded digits and save it.

Deterministic (fixed seed, one thread); about a minute of CPU. The shipped weights were made with

    .venv/bin/python scripts/train_digits_classifier.py --out src/cmkit/assets

It prints the held-out accuracy and the FD-digits calibration (floor, noisy training images, a Gaussian
fitted to the pixels) measured with the new classifier.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cmkit.data.digits import load_digits
from cmkit.metrics.classifier import DigitsClassifier


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with background (-1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, 1, h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, 1, h, w)
    return out.gather(3, cols)


def train(epochs: int, batch_size: int, lr: float, seed: int) -> DigitsClassifier:
    """Train a :class:`DigitsClassifier` on the train split with shift augmentation, AdamW and cosine decay."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_digits("train")
    model = DigitsClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(images) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for idx in order.split(batch_size):
            x = random_shift(images[idx], generator)
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitsClassifier, split: str) -> float:
    """Top-1 accuracy of ``model`` on a split of the embedded digits."""
    x, y = load_digits(split)  # type: ignore[arg-type]
    return float((model(x).argmax(1) == y).float().mean())


def calibration(model: DigitsClassifier, draws: int = 5) -> dict[str, tuple[float, float]]:
    """FD-digits (mean, std over draws of 360) of the floor and of two degradations of real images."""
    from cmkit.metrics.fd_digits import DRAW_SIZE, fd_digits, fd_digits_floor

    train_x, _ = load_digits("train")
    g = torch.Generator().manual_seed(1)
    noisy, gauss = [], []
    flat = train_x.flatten(1).double()
    mean, cov = flat.mean(0), torch.cov(flat.T)
    fitted = torch.distributions.MultivariateNormal(mean, cov + 1e-6 * torch.eye(64, dtype=torch.float64))
    for _ in range(draws):
        idx = torch.randperm(len(train_x), generator=g)[:DRAW_SIZE]
        noisy.append(fd_digits(train_x[idx] + 0.1 * torch.randn(train_x[idx].shape, generator=g), model))
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
        gauss.append(fd_digits(fitted.sample((DRAW_SIZE,)).float().reshape(-1, 1, 8, 8).clamp(-1, 1), model))
    stats = lambda v: (float(torch.tensor(v).mean()), float(torch.tensor(v).std()))  # noqa: E731
    floor = fd_digits_floor(classifier=model)
    return {"floor": floor, "train + N(0, 0.1^2)": stats(noisy), "Gaussian fit": stats(gauss)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for the weights and config")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-calibration", action="store_true", help="skip the FD calibration printout")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = train(args.epochs, args.batch_size, args.lr, args.seed)
    seconds = time.perf_counter() - start
    path = model.save_pretrained(args.out)
    print(f"saved {path} ({path.stat().st_size / 1024:.0f} KiB) after {seconds:.1f} s of training")
    print(f"accuracy: train {accuracy(model, 'train'):.4f}, held-out {accuracy(model, 'test'):.4f}")
    if not args.no_calibration:
        model.requires_grad_(False)
        for name, (m, s) in calibration(model).items():
            print(f"FD-digits {name:>20}: {m:8.2f} ± {s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
