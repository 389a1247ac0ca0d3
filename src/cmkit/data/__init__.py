"""Data sets: the embedded 8x8 digits, 2-D toy distributions, and a user's folder of images."""
