"""Run by tests/training/test_distributed.py under torchrun (CPU, gloo): a few steps of small EDM objectives through
each path of :class:`cmkit.training.distributed.GradientSync`; rank 0 saves what the test compares with one process.

    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py RESULTS.pt TMPDIR

Each scenario is also run by the test on one process (``run_scenario`` without a process group), so this module
holds the one definition of both.
"""

import sys
from pathlib import Path

import torch
from torch import nn

from cmkit.data import SamplerSource
from cmkit.models.denoiser import Denoiser
from cmkit.models.mlp import MLPNet
from cmkit.training.distributed import setup_distributed
from cmkit.training.loop import Trainer
from cmkit.training.objectives.edm import EDMObjective
from builders import HookedObjective, toy_config

STEPS = 3


def data():
    from cmkit.data.toys import sample_toy

    return SamplerSource(lambda n, g: sample_toy("8gaussians", n, generator=g), sample_shape=(2,))


def denoiser(unused_layer=False):
    torch.manual_seed(0)
    net = MLPNet(sample_shape=(2,), width=16, num_blocks=1, embedding_dim=8)
    if unused_layer:
        net.never_called = nn.Linear(3, 3)  # a parameter no forward uses: DDP needs find_unused_parameters
    return Denoiser(net, "edm")


class Bypassing(EDMObjective):
    """Calls the inner model for its gradient pass (as ``torch.func.jvp`` on the inner module would)."""

    @property
    def online(self):
        return self.model


class TwiceOnline(EDMObjective):
    """Calls the online wrapper twice with gradients in one micro-batch (unsupported)."""

    def __call__(self, x0, class_labels, step, rng):
        out = super().__call__(x0, class_labels, step, rng)
        self.online(x0, torch.ones(x0.shape[0]), class_labels)
        return out


class OnlineInFirstMicroBatchOnly(EDMObjective):
    """Calls the online wrapper in the first micro-batch of each process only (unsupported: half-synchronised)."""

    def __call__(self, x0, class_labels, step, rng):
        self.first = rng.offset % (rng.global_batch // 2) == 0
        return super().__call__(x0, class_labels, step, rng)

    @property
    def online(self):
        return super().online if self.first else self.model


SCENARIOS = {
    "ddp": lambda: EDMObjective(denoiser()),
    "unused_parameter": lambda: EDMObjective(denoiser(unused_layer=True)),
    "no_set_online": lambda: HookedObjective(EDMObjective(denoiser()), at=-1, hook=None),
    "bypassing": lambda: Bypassing(denoiser()),
}


def run_scenario(name, tmp, ctx=None, grad_accum=2):
    """``STEPS`` steps of scenario ``name``; returns the weights, the losses and how the last step averaged."""
    cfg = toy_config(tmp, batch_size=16, grad_accum=grad_accum, grad_clip=None, lr=1e-2, output_dir=str(tmp / name))
    trainer = Trainer(cfg, SCENARIOS[name](), data(), ctx)
    losses = [trainer.step(step)[0] for step in range(STEPS)]
    trainer.sync.close()
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    sync = trainer.sync
    return {"weights": weights, "losses": losses, "mode": sync.last_mode, "find_unused": sync._find_unused}


def main(results_path, tmp):
    ctx = setup_distributed("cpu", 60)
    try:
        results = {name: run_scenario(name, tmp, ctx) for name in SCENARIOS}
        cfg = toy_config(tmp, batch_size=16, output_dir=str(tmp / "twice"))
        trainer = Trainer(cfg, TwiceOnline(denoiser()), data(), ctx)
        try:
            for step in range(STEPS):
                trainer.step(step)
            results["twice_error"] = None
        except RuntimeError as err:
            results["twice_error"] = str(err)
        trainer.sync.close()
        cfg = cfg.replace(grad_accum=2, output_dir=str(tmp / "mixed"))
        trainer = Trainer(cfg, OnlineInFirstMicroBatchOnly(denoiser()), data(), ctx)
        try:
            for step in range(STEPS):
                trainer.step(step)
            results["mixed_error"] = None
        except RuntimeError as err:
            results["mixed_error"] = str(err)
        trainer.sync.close()
        if ctx.is_main:
            torch.save(results, results_path)
    finally:
        ctx.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
