"""Schedulers with diffusers-compatible APIs, as thin adapters over cmkit.karras."""
