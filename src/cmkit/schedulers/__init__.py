"""Schedulers with diffusers-compatible APIs, as thin adapters over cmkit.karras."""

from .cm import CMStochasticIterativeScheduler, CMStochasticIterativeSchedulerOutput
from .scm import SCMScheduler, SCMSchedulerOutput
from .tcd import TCDScheduler, TCDSchedulerOutput
