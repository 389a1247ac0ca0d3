"""Training: objectives, schedules, losses and the loop."""
