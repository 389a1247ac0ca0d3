"""User-facing checks live in one module (cmkit._validate); cmkit.limits re-exports require_int."""

import pytest

import cmkit.limits
from cmkit._validate import check_choice, check_custom_timesteps, is_int, require_int, require_positive


def test_limits_reexports_the_one_require_int():
    assert cmkit.limits.require_int is require_int


def test_check_choice_names_the_value_and_lists_the_choices():
    check_choice("mode", "a", ("a", "b"))
    check_choice("padding", None, (None, 0, 1))
    with pytest.raises(ValueError, match=r"^mode must be one of 'a', 'b', got 'c'$"):
        check_choice("mode", "c", ("a", "b"))
    with pytest.raises(ValueError, match=r"padding must be one of None, 0, 1, got 2"):
        check_choice("padding", 2, iter((None, 0, 1)))


def test_is_int_and_require_int_refuse_bools_and_optionally_floats():
    import numpy as np

    assert is_int(3) and is_int(np.int64(3)) and not is_int(True) and not is_int(3.0)
    assert is_int(3.0, allow_float=True) and not is_int(3.5, allow_float=True) and not is_int(float("nan"), True)
    assert require_int("n", np.int64(4), 1) == 4 and require_int("n", 4.0, 1) == 4
    with pytest.raises(ValueError, match=r"n must be an integer >= 1 \(a count\), got 4.0"):
        require_int("n", 4.0, 1, " (a count)", allow_float=False)


def test_require_positive_refuses_zero_nan_inf_and_bools():
    assert require_positive("rho", 7) == 7.0
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "7"):
        with pytest.raises(ValueError, match="rho must be a positive finite number"):
            require_positive("rho", bad)
    with pytest.raises(ValueError, match=r"^t must be a positive number of seconds \(e.g. 300\), got -1$"):
        require_positive("t", -1, " (e.g. 300)", what="number of seconds")


def test_check_custom_timesteps_is_shared_by_both_schedulers():
    import numpy as np
    import torch

    assert check_custom_timesteps(np.array([22, 0]), 40) == [22, 0]
    assert check_custom_timesteps(torch.tensor([22.0, 0.0]), 40) == [22, 0]
    for bad, match in (
        ([], "empty"), ([5, True], "integer grid indices"), ([22.5, 0], "integers"), (["a"], "integers"),
        ([0, 22], "strictly descending"), ([40, 0], r"\[0, 39\]"), ([5, -1], r"\[0, 39\]"),
    ):
        with pytest.raises(ValueError, match=match):
            check_custom_timesteps(bad, 40)
    from cmkit.schedulers.cm import CMStochasticIterativeScheduler
    from cmkit.schedulers.tcd import TCDScheduler

    for scheduler in (CMStochasticIterativeScheduler(num_train_timesteps=40), TCDScheduler(num_train_timesteps=40, original_inference_steps=10)):
        with pytest.raises(ValueError, match=r"integer grid indices \(integers\), got True"):
            scheduler.set_timesteps(timesteps=[30, True])


def test_scheduler_and_unet_configs_use_the_shared_checks():
    from cmkit.models.unet import UNet2DModel
    from cmkit.schedulers.cm import CMStochasticIterativeScheduler
    from cmkit.schedulers.tcd import TCDScheduler

    for bad in ({"sigma_data": float("nan")}, {"rho": float("inf")}, {"s_noise": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CMStochasticIterativeScheduler(**bad)
    with pytest.raises(ValueError, match="sample_max_value must be a positive finite number"):
        TCDScheduler(sample_max_value=float("nan"))
    with pytest.raises(ValueError, match="begin_index must be an integer >= 0"):
        CMStochasticIterativeScheduler().set_begin_index(True)
    with pytest.raises(ValueError, match=r"layers_per_block must be an integer >= 1 \(one count for all blocks\)"):
        UNet2DModel(layers_per_block=2.0)
    with pytest.raises(ValueError, match=r"upsample_type must be one of 'conv', 'resnet', got 'nearest'"):
        UNet2DModel(upsample_type="nearest")
