"""Checkpoint conversion: other projects' weight files into cmkit / diffusers pipeline directories.

It sits above the pipeline (it builds pipelines), unlike :mod:`cmkit.io`, which only reads and writes files.
"""
