"""Schedulers with diffusers-compatible APIs, as thin adapters over cmkit.karras."""

from .cm import CMStochasticIterativeScheduler, CMStochasticIterativeSchedulerOutput
from .tcd import TCDScheduler, TCDSchedulerOutput
