"""The training loop: data-parallel steps of any objective, with EMA, checkpoints, exact resume and pictures.

``train(config)`` builds everything from a :class:`~cmkit.training.config.TrainConfig` and returns the output
directory; :class:`Trainer` runs a loop around an objective you built yourself. The loop knows nothing about
the objective's math (that is :mod:`cmkit.training.objectives`): per step it

1. takes this process's slice of the global batch of step ``k`` (a function of ``(seed, k)``),
2. reseeds the global RNG from ``(seed, k)`` and splits the slice into ``grad_accum`` micro-batches, each with
   the :class:`~cmkit.streams.StepRandom` of its own samples of the global batch,
3. per micro-batch evaluates the loss under autocast (bf16 / fp16) and back-propagates it divided by
   ``grad_accum`` (fp16 through a ``GradScaler``), so the gradient is that of the global batch's mean loss,
4. averages gradients over processes (:class:`~cmkit.training.distributed.GradientSync`: DDP during the last
   backward), clips their norm, steps RAdam / Adam with warm-up and optional cosine decay, then lets the
   objective update its target and updates the EMAs.

All randomness comes from ``(seed, step)``, so resuming from a checkpoint reproduces an uninterrupted run
bit for bit on CPU, and P processes match one process with the same global batch up to float rounding.
SIGTERM and SIGINT stop the run after the current step with a checkpoint (:mod:`cmkit.training.preemption`).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..data import DataSource
from ..data.loader import StepBatches, StepImageSource
from . import checkpoint as ckpt
from . import report
from .report import CONFIG_FILE
from .build import build_data, build_model, build_objective, load_teacher, scheduler_num_timesteps
from .config import TrainConfig
from .distributed import DistContext, GradientSync, setup_distributed
from .ema import EMA, ema_key
from .ema_snapshots import remove_snapshots_after, write_snapshots
from .power_ema import PowerEMA, power_ema_key
from .metrics_log import append_metrics, keep_metrics_up_to
from .objectives import Objective, method_spec
from .plots import save_loss_curve
from .preemption import StopSignals, TrainingStopped
from ..streams import StepRandom, step_seed

#: stream of :func:`step_seed` that reseeds the global RNG at every step (dropout and anything else global).
GLOBAL_RNG_STREAM = 13
METRICS_FILE = "metrics.jsonl"
#: fields that may change between a run and its resumption without changing the trained weights.
RESUMABLE_CHANGES = frozenset(
    {
        "save_every", "keep_checkpoints", "sample_every", "num_samples", "log_every", "progress", "device", "tau",
        "scheduler_timesteps", "dist_timeout", "ema_snapshot_every",
        "data.workers",
        "grad_accum",  # only the order of float sums changes, as with another number of processes (see docs)
    }
)
#: fields that may change on resumption, e.g. to extend a run or rescue a diverging one; the result then differs
#: from a fresh run of either config (schedules such as N(k) and the cosine decay depend on ``steps``).
RECOVERY_CHANGES = frozenset({"steps", "lr", "grad_clip", "precision", "warmup_steps", "lr_schedule", "min_lr_ratio",
                              "lr_decay_steps"})


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN or infinite; the run stopped without overwriting good checkpoints."""


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate at ``step`` (0-based): a linear warm-up ``min(1, (step + 1) / warmup_steps)`` times

    * ``constant``: ``lr``;
    * ``cosine``: a cosine from ``lr`` after the warm-up to ``min_lr_ratio * lr`` at ``steps``;
    * ``inverse_sqrt``: EDM2's ``alpha(t) = alpha_ref / sqrt(max(t / t_ref, 1))`` (Karras et al. 2024, sec. 2.3,
      with its warm-up multiplied in, as EDM2's code does) with ``alpha_ref = lr``, ``t = step`` and
      ``t_ref = lr_decay_steps``: constant until ``t_ref``, then ``lr sqrt(t_ref / step)``.
    """
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.lr_schedule == "constant":
        return config.lr * warm
    if config.lr_schedule == "inverse_sqrt":
        assert config.lr_decay_steps is not None  # TrainConfig requires it
        return config.lr * warm / math.sqrt(max(step / config.lr_decay_steps, 1.0))
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, max(0.0, (step - config.warmup_steps) / span))
    ratio = config.min_lr_ratio + (1.0 - config.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr * warm * ratio


def make_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """RAdam or Adam over ``params`` with the config's betas, epsilon and weight decay."""
    cls = torch.optim.RAdam if config.optimizer == "radam" else torch.optim.Adam
    return cls(params, lr=config.lr, betas=tuple(config.betas), eps=config.adam_eps, weight_decay=config.weight_decay)


class Trainer:
    """Runs ``objective`` on ``data`` as described by ``config`` (built by :func:`train`, or by hand in tests)."""

    def __init__(
        self, config: TrainConfig, objective: Objective, data: DataSource, ctx: Optional[DistContext] = None
    ) -> None:
        self.config = config
        self.objective = objective
        self.data = data
        self.ctx = ctx or DistContext()
        if config.batch_size % self.ctx.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} must be divisible by the number of processes ({self.ctx.world_size})"
            )
        local = config.batch_size // self.ctx.world_size
        if local % config.grad_accum:
            raise ValueError(
                f"grad_accum {config.grad_accum} must divide the batch of each process ({local} = batch_size "
                f"{config.batch_size} / {self.ctx.world_size} processes); choose a divisor of {local} or another "
                "batch size"
            )
        self.output_dir = Path(config.output_dir)
        self.model: nn.Module = objective.model.to(self.ctx.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the objective's model has no trainable parameters")
        self.optimizer = make_optimizer(config, self.params)
        self.sync = GradientSync(self.ctx, self.model, self.params, objective)
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.precision]
        self.scaler = torch.amp.GradScaler(self.ctx.device.type) if config.precision == "fp16" else None
        self.ema = EMA(self.model, config.ema_rates, config.ema_warmup) if self.ctx.is_main else None
        self.power_ema = PowerEMA(self.model, config.ema_stds) if self.ctx.is_main and config.ema_stds else None
        self.losses: list[float] = []
        self.start_step = 0
        self.last_checkpoint: Optional[Path] = None
        self._batches: Optional[StepBatches] = None  # the prefetching loader while run() streams the steps

    def save(self, step: int) -> Path:
        """Checkpoint after ``step`` optimizer steps (main process writes; every process waits)."""
        path = ckpt.checkpoint_dir(self.output_dir, step)
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]  # same on every process
        if bad:
            raise NonFiniteLossError(f"weights became non-finite ({bad[0]}, ...) at step {step}; not saving them")
        if self.ctx.is_main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "objective": self.objective.state_dict(),
                "losses": torch.tensor(self.losses, dtype=torch.float64),
            }
            averages = {**self.ema.state_dict(), **(self.power_ema.state_dict() if self.power_ema is not None else {})}
            path = ckpt.save_checkpoint(
                self.output_dir, step, self.model.state_dict(), averages, state, self.config.keep_checkpoints
            )
        self.ctx.barrier()
        self.last_checkpoint = path
        return path

    def resume(self) -> bool:
        """Load the newest good checkpoint of the output directory, if any; returns whether one was loaded.

        A damaged newest checkpoint is skipped with a warning (:func:`~cmkit.training.checkpoint.load_latest_checkpoint`).
        """
        saved = ckpt.load_latest_checkpoint(self.output_dir)
        if saved is None:
            return False
        self.model.load_state_dict(saved.model)
        self.optimizer.load_state_dict(saved.state["optimizer"])
        if self.scaler is not None and saved.state.get("scaler"):
            self.scaler.load_state_dict(saved.state["scaler"])
        self.objective.load_state_dict(saved.state.get("objective", {}))
        if self.ema is not None:
            self.ema.load_state_dict(saved.ema)
        if self.power_ema is not None:
            self.power_ema.load_state_dict(saved.ema)
        self.losses = [float(v) for v in saved.state.get("losses", torch.zeros(0)).tolist()]
        self.start_step = saved.step
        self.last_checkpoint = saved.path
        return True

    def step(self, step: int) -> tuple[float, float, dict[str, float]]:
        """One optimizer step; returns the loss (mean over processes), the gradient norm and the metrics."""
        cfg, ctx, device = self.config, self.ctx, self.ctx.device
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        offset, local = self._process_slice()
        x0, labels = self.local_batch(step, offset, local)
        x0 = x0.to(device)
        labels = labels.to(device) if labels is not None else None
        torch.manual_seed(step_seed(cfg.seed, step, GLOBAL_RNG_STREAM) + ctx.rank)
        self.model.train()
        loss_sum, metrics = self._accumulate_gradients(x0, labels, step, offset)
        loss_mean = float(ctx.mean(loss_sum / cfg.grad_accum))
        if not math.isfinite(loss_mean):
            raise NonFiniteLossError(f"the loss is {loss_mean} at step {step + 1}")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
        else:
            grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None]))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped (and the scale lowered) when gradients overflowed
            self.scaler.update()
        elif not math.isfinite(grad_norm):
            raise NonFiniteLossError(f"the gradient norm is {grad_norm} at step {step + 1}")
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.objective.after_optimizer_step(step)
        if self.ema is not None:
            self.ema.update(self.model, step)
        if self.power_ema is not None:
            self.power_ema.update(self.model, step)
        return loss_mean, grad_norm, metrics

    def _accumulate_gradients(
        self, x0: torch.Tensor, labels: Optional[torch.Tensor], step: int, offset: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Backward of this process's batch ``x0`` (samples ``offset...`` of the global batch) in ``grad_accum`` parts.

        Micro-batch ``j`` holds samples ``offset + j m ... offset + (j + 1) m - 1`` and draws with their
        :class:`StepRandom`, so its noise is that of the unsplit batch. Its mean loss is divided by ``K = grad_accum``:
        the accumulated gradient is ``(1/K) sum_j grad mean_j``, the gradient of the batch's mean loss, which the
        processes then average. Returns the sum of the micro-batches' losses and the mean of their metrics.
        """
        cfg, device, k = self.config, self.ctx.device, self.config.grad_accum
        micro = x0.shape[0] // k
        dtype, enabled = self.autocast_dtype or torch.float32, self.autocast_dtype is not None
        loss_sum: Optional[torch.Tensor] = None  # on the device: no synchronisation per micro-batch
        metric_sums: dict[str, float] = {}
        for j in range(k):
            part = slice(j * micro, (j + 1) * micro)
            rng = StepRandom(cfg.seed, step, cfg.batch_size, offset + j * micro, micro, device=device)
            with self.sync.micro_batch(last=j == k - 1):
                with torch.autocast(device.type, dtype=dtype, enabled=enabled):
                    out = self.objective(x0[part], labels[part] if labels is not None else None, step, rng)
                loss = out.loss.float()
                (self.scaler.scale(loss / k) if self.scaler is not None else loss / k).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            for name, value in out.metrics.items():
                metric_sums[name] = metric_sums.get(name, 0.0) + value
        self.sync.finish()
        assert loss_sum is not None
        return loss_sum, {name: value / k for name, value in metric_sums.items()}

    def _process_slice(self) -> tuple[int, int]:
        """This process's ``(offset, local batch)`` in every step's global batch."""
        local = self.config.batch_size // self.ctx.world_size
        return self.ctx.rank * local, local

    def local_batch(self, step: int, offset: int, local: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """This process's slice of step ``step``'s global batch: from the prefetching loader while :meth:`run` takes
        the steps in order, else computed here by ``data.batch`` (the reference; both give the same tensors)."""
        if self._batches is not None and self._batches.next_step == step:
            return next(self._batches)
        return self.data.batch(self.config.seed, step, self.config.batch_size, offset, local)

    def _open_loader(self) -> Optional[StepBatches]:
        """The loader of the steps left, for data that prefetch in background processes (else None)."""
        cfg = self.config
        if not isinstance(self.data, StepImageSource) or self.start_step >= cfg.steps:
            return None
        offset, local = self._process_slice()
        return self.data.loader(
            cfg.seed, self.start_step, cfg.steps, cfg.batch_size, offset, local, workers=cfg.data.workers, device=self.ctx.device
        )

    def run(self) -> Path:
        """Train from ``start_step`` to ``config.steps``; export and return the output directory.

        SIGTERM or SIGINT during the steps ends the run after the current step (the same step on every process)
        with a checkpoint, raising :class:`~cmkit.training.preemption.TrainingStopped`.
        """
        cfg, ctx = self.config, self.ctx
        if ctx.is_main:  # clean up after a killed run: half-written checkpoints, log entries past the checkpoint
            ckpt.remove_temporary_dirs(self.output_dir)
            keep_metrics_up_to(self.output_dir / METRICS_FILE, self.start_step)
            remove_snapshots_after(self.output_dir, self.start_step)  # a resumed run writes them again
        bar = None
        if ctx.is_main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.start_step, desc=f"cmkit train {cfg.method}", file=sys.stderr, dynamic_ncols=True)
        t_start, train_seconds, done, stop = time.perf_counter(), 0.0, 0, StopSignals()
        try:
            self._batches = self._open_loader()
            stop.install()
            for step in range(self.start_step, cfg.steps):
                t0 = time.perf_counter()
                try:
                    loss, grad_norm, metrics = self.step(step)
                except NonFiniteLossError as err:
                    raise NonFiniteLossError(self._stop_message(str(err))) from None
                train_seconds += time.perf_counter() - t0
                self.losses.append(loss)
                done += 1
                k = step + 1
                rate = done * cfg.batch_size / max(train_seconds, 1e-9)  # samples/s of training steps alone
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4g}", samples_s=f"{rate:.0f}", refresh=False)
                if (k % cfg.log_every == 0 or k == cfg.steps) and ctx.is_main:
                    # the objective's metrics are this process's own; "loss" is the mean over processes
                    entry = {"step": k, **metrics, "loss": loss, "lr": learning_rate(cfg, step), "grad_norm": grad_norm, "samples_per_s": rate}
                    if isinstance(self.data, StepImageSource):  # records replaced so far (those this process met)
                        entry["unreadable_images"] = self.data.num_unreadable
                    append_metrics(self.output_dir / METRICS_FILE, [entry])
                if self.power_ema is not None and cfg.ema_snapshot_every and (k % cfg.ema_snapshot_every == 0 or k == cfg.steps):
                    write_snapshots(self.power_ema, self.output_dir, k, cfg.batch_size)
                stop_signal = ctx.max_int(stop.received)  # the processes agree: all stop after the same step
                if stop_signal:
                    raise TrainingStopped(stop_signal, k, self._save_or_stop(k), self.output_dir)
                if cfg.save_every and k % cfg.save_every == 0 and k < cfg.steps:
                    self._save_or_stop(k)
                if cfg.sample_every and k % cfg.sample_every == 0 and k < cfg.steps and ctx.is_main:
                    self.save_samples(k)
        finally:
            stop.restore()
            if self._batches is not None:
                self._batches.close()
                self._batches = None
            if bar is not None:
                bar.close()
            if ctx.is_main and self.losses:
                save_loss_curve(self.losses, self.output_dir / "loss.png", title=f"{cfg.method} on {cfg.data.spec()}")
        seconds = time.perf_counter() - t_start
        if self.start_step < cfg.steps or self.last_checkpoint is None:
            self._save_or_stop(cfg.steps)
        if ctx.is_main:
            self.save_samples(cfg.steps)
            self.export(seconds, done, train_seconds)
        ctx.barrier()
        return self.output_dir

    def _save_or_stop(self, step: int) -> Path:
        try:
            return self.save(step)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(self._stop_message(str(err))) from None

    def _stop_message(self, what: str) -> str:
        where = (
            f"the last good checkpoint is {self.last_checkpoint}; fix the cause and continue from it with --resume"
            if self.last_checkpoint is not None
            else "no checkpoint was written before it (lower save_every to keep one)"
        )
        return (
            f"{what}; training stopped. Try a lower learning rate (now {self.config.lr}), gradient clipping, a longer "
            f"warm-up, or bf16/fp32 instead of fp16. {where}."
        )

    def eval_model(self) -> nn.Module:
        """The network that gets exported: the chosen EMA (or the online weights), in eval mode."""
        rate, std = self.config.exported_ema_rate, self.config.exported_ema_std
        if std is not None and self.power_ema is not None:
            return self.power_ema.copy_model(self.model, std)
        if rate is None or self.ema is None:
            return self.model.eval()
        return self.ema.copy_model(self.model, rate)

    def generate(self, model: nn.Module, n: int) -> torch.Tensor:
        """``n`` report samples of ``model`` (:func:`cmkit.training.report.generate`)."""
        return report.generate(model, self.data, n, self.config.seed, self.ctx.device)

    def save_samples(self, step: int) -> Path:
        """A sample grid (images) or scatter plot (2-D points) of the evaluation model at ``step``."""
        samples = self.generate(self.eval_model(), self.config.num_samples)
        return report.save_samples(samples, self.data, self.config, self.output_dir / "samples" / f"step-{step:08d}.png", step)

    def export(self, seconds: float, steps_run: int, train_seconds: float) -> Path:
        """Write the pipeline directory, the config and the run's info (:func:`cmkit.training.report.write_outputs`)."""
        cfg, model = self.config, self.eval_model()
        rate, std = cfg.exported_ema_rate, cfg.exported_ema_std
        info = {
            "exported_weights": power_ema_key(std) if std is not None else "online" if rate is None else ema_key(rate),
            "steps": cfg.steps,
            "steps_this_session": steps_run,
            "seconds_this_session": round(seconds, 3),
            "train_step_seconds_this_session": round(train_seconds, 3),
            "world_size": self.ctx.world_size,
            "gradient_averaging": self.sync.last_mode,
            "final_loss": self.losses[-1] if self.losses else None,
        }
        return report.write_outputs(
            self.output_dir, cfg, model, self.data,
            parameterization=getattr(model, "parameterization", method_spec(cfg.method).parameterization),
            num_train_timesteps=scheduler_num_timesteps(cfg, self.objective), info=info,
            scheduler=self.objective.export_scheduler() if hasattr(self.objective, "export_scheduler") else None,
        )


def _fields(config: TrainConfig) -> dict:
    """The config's fields, the data's as ``data.NAME``."""
    d = config.to_dict()
    data = d.pop("data")
    return {**d, **{f"data.{k}": v for k, v in data.items()}}


def _check_resumable(saved: TrainConfig, new: TrainConfig) -> None:
    old_fields = _fields(saved)
    changed = [k for k, v in _fields(new).items() if old_fields.get(k) != v]
    fixed = [k for k in changed if k not in RESUMABLE_CHANGES | RECOVERY_CHANGES]
    rescue = [k for k in changed if k in RECOVERY_CHANGES]
    if rescue:
        warnings.warn(
            f"resuming {new.output_dir} with changed {', '.join(rescue)}: the result will differ from a fresh run of "
            "either config (the saved train_config.json records only the new values)",
            stacklevel=3,
        )
    if fixed:
        raise ValueError(
            f"cannot resume {new.output_dir}: {', '.join(fixed)} differ from the saved train_config.json; resume with "
            "the saved config (cmkit train --config DIR/train_config.json --resume) or use another output directory"
        )


def _check_output_dir(out: Path, resume: bool) -> None:
    """A new run needs a directory without checkpoints; ``resume`` needs one with a checkpoint."""
    has_run = ckpt.latest_checkpoint(out) is not None
    if has_run and not resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another output directory")
    if resume and not has_run:
        what = "does not exist" if not out.exists() else f"holds no checkpoint (nothing complete in {out / ckpt.CHECKPOINTS})"
        raise ValueError(f"cannot resume {out}: the directory {what}; drop --resume to start a new run there, or check --output")


def train(config: TrainConfig, *, resume: bool = False) -> Path:
    """Train as ``config`` says (on every process torchrun started) and return the output directory.

    Raises :class:`~cmkit.training.preemption.TrainingStopped` when SIGTERM / SIGINT stopped the run early (a
    checkpoint was written; ``resume=True`` continues it).
    """
    out = Path(config.output_dir)
    _check_output_dir(out, resume)
    ctx = setup_distributed(config.device, config.dist_timeout)
    trainer: Optional[Trainer] = None
    try:
        saved_config = out / CONFIG_FILE
        if resume and saved_config.is_file():
            _check_resumable(TrainConfig.from_json(saved_config), config)
        data = build_data(config)
        teacher = load_teacher(config.teacher).to(ctx.device) if config.teacher else None
        torch.manual_seed(config.seed)
        model = build_model(config, data, teacher).to(ctx.device)
        ctx.broadcast_module(model)
        objective = build_objective(config, model, teacher)
        trainer = Trainer(config, objective, data, ctx)
        if resume:
            trainer.resume()
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            config.to_json(saved_config)
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.sync.close()  # DDP holds the process group: release it first
        ctx.close()
