"""The prefetching loader: any number of workers and any start step give the reference batches, in step order."""

import multiprocessing
import os
import signal
import time

import pytest
import torch

from builders import write_image_folder
from cmkit.data import build_dataset


@pytest.fixture
def images(tmp_path):
    return build_dataset("folder", path=str(write_image_folder(tmp_path / "imgs")), resolution=8, flip=True)


def reference(src, steps, offset=0, local=None):
    return [src.batch(3, step, 4, offset, local) for step in steps]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b))


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_give_the_reference_batches_in_step_order(images, workers):
    with images.loader(3, 0, 6, 4, workers=workers) as batches:
        assert batches.next_step == 0
        got = list(batches)
        assert batches.next_step == 6
    assert same(got, reference(images, range(6)))  # 6 steps of 4 over 10 images: three epochs


def test_resume_mid_epoch_and_slices(images):
    with images.loader(3, 2, 5, 4, workers=2) as batches:  # resumed after 2 steps, in the middle of epoch 0
        assert same(list(batches), reference(images, range(2, 5)))
    with images.loader(3, 2, 5, 4, 2, 2, workers=1) as batches:  # process 1 of 2
        assert same(list(batches), reference(images, range(2, 5), 2, 2))


def test_close_stops_the_workers(images):
    before = set(multiprocessing.active_children())
    batches = images.loader(3, 0, 100, 4, workers=2)
    next(batches)
    assert len(set(multiprocessing.active_children()) - before) == 2
    batches.close()
    assert not set(multiprocessing.active_children()) - before
    with pytest.raises(StopIteration):
        next(batches)


def test_loader_arguments_are_checked(images):
    with pytest.raises(ValueError, match=r"workers must be an integer >= 0"):
        images.loader(0, 0, 2, 4, workers=-1)
    with pytest.raises(ValueError, match="does not fit a global batch"):
        images.loader(0, 0, 2, 4, 3, 2)
    with pytest.raises(ValueError, match="stop_step >= start_step"):
        images.loader(0, 5, 2, 4)


def test_workers_leave_stop_signals_to_the_training_process(images):
    before = set(multiprocessing.active_children())
    with images.loader(3, 0, 6, 4, workers=2) as batches:
        got = [next(batches), next(batches)]  # both workers have started
        for worker in set(multiprocessing.active_children()) - before:  # as Ctrl-C or srun's SIGTERM reach them
            os.kill(worker.pid, signal.SIGINT)
            os.kill(worker.pid, signal.SIGTERM)
        time.sleep(0.3)
        got.extend(batches)  # the run finishes its step (and saves) with the workers it has
    assert same(got, reference(images, range(6)))
