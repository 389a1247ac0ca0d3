"""``cmkit train`` end to end on tiny runs: every method, the three data kinds, config reproduction, resume, errors."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from builders import write_image_folder
from cmkit.cli import main
from cmkit.io.weights import load_state_dict
from cmkit.training import checkpoint as ckpt

TINY_MLP = ["--model-option", "width=16", "--model-option", "num_blocks=1", "--model-option", "embedding_dim=8"]
FAST = ["--no-progress", "--num-samples", "8", "--batch-size", "8", "--seed", "1"]


def weights(directory):
    return load_state_dict(directory / "unet" / "diffusion_pytorch_model.safetensors")


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "teacher"
    rc = main(["train", "--method", "edm", "--data", "toy:moons", "--steps", "3", "--lr", "2e-3", "--output", str(out), *TINY_MLP, *FAST])
    assert rc == 0
    return out


def test_help_shows_cd_ict_and_ect_examples(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for example in ("--method cd --teacher", "--method ict --data digits", "--method ect --teacher", "torchrun", "--resume"):
        assert example in text


def test_teacher_then_cd_and_ect(teacher, tmp_path, capsys):
    from cmkit import ConsistencyModelPipeline

    index = json.loads((teacher / "model_index.json").read_text())
    assert index["cmkit_parameterization"] == "edm" and index["unet"] == ["cmkit", "MLPNet"]
    cd = tmp_path / "cd"
    assert main(["train", "--method", "cd", "--teacher", str(teacher), "--data", "toy:moons", "--steps", "2",
                 "--option", "num_scales=6", "--tau", "0.3", "--output", str(cd), *FAST]) == 0
    assert "trained cd for 2 steps" in capsys.readouterr().out
    scheduler = json.loads((cd / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["num_train_timesteps"] == 6 and scheduler["clip_denoised"] is False  # 2-D points: no [-1, 1] clip
    assert json.loads((cd / "model_index.json").read_text())["cmkit_default_timesteps"] == {"2": [4, 0]}  # sigma 0.3
    pipe = ConsistencyModelPipeline.from_pretrained(cd)
    points = pipe(batch_size=5, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert points.shape == (5, 2) and torch.isfinite(points).all()
    ect = tmp_path / "ect"
    assert main(["train", "--method", "ect", "--teacher", str(teacher), "--data", "toy:moons", "--steps", "2",
                 "--option", "steps_per_stage=1", "--output", str(ect), *FAST]) == 0
    assert json.loads((ect / "training_info.json").read_text())["parameterization"] == "consistency"
    # a consistency model is no teacher
    assert main(["train", "--method", "cd", "--teacher", str(cd), "--data", "toy:moons", "--steps", "1",
                 "--output", str(tmp_path / "bad"), *FAST]) == 1
    assert "not an EDM denoiser" in capsys.readouterr().err


def test_ict_on_digits_with_a_unet(tmp_path):
    out = tmp_path / "ict"
    assert main(["train", "--method", "ict", "--data", "digits", "--model", "tiny", "--steps", "2", "--output", str(out),
                 "--model-option", "block_out_channels=[16, 32]", *FAST]) == 0
    info = json.loads((out / "training_info.json").read_text())
    assert info["class_names"] == [str(c) for c in range(10)] and info["sample_shape"] == [1, 8, 8]
    unet = json.loads((out / "unet" / "config.json").read_text())
    assert unet["_class_name"] == "UNet2DModel" and unet["num_class_embeds"] == 10 and unet["in_channels"] == 1
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["clip_denoised"] is True
    assert Image.open(out / "samples" / "step-00000002.png").size == (3 * 64, 3 * 64)  # 8 samples of 8x8 upscaled 8x, 3 columns


def test_ct_on_an_image_folder(tmp_path):
    for name, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        for i in range(3):
            (tmp_path / "imgs" / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 10), color).save(tmp_path / "imgs" / name / f"{i}.png")
    (tmp_path / "imgs" / "red" / "bad.png").write_bytes(b"garbage")
    out = tmp_path / "ct"
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        rc = main(["train", "--method", "ct", "--data", f"folder:{tmp_path / 'imgs'}", "--resolution", "8", "--flip",
                   "--model", "tiny", "--model-option", "block_out_channels=[16, 32]", "--steps", "2",
                   "--output", str(out), *FAST])
    assert rc == 0
    info = json.loads((out / "training_info.json").read_text())
    # folders stream: the unreadable file is a record until it is met, then replaced and counted in the log
    assert info["class_names"] == ["blue", "red"] and info["num_train_samples"] == 7
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["unreadable_images"] == 1
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["data"]["kind"] == "folder" and saved["data"]["flip"] is True and saved["data"]["resolution"] == 8


@pytest.mark.slow  # two runs, with loader worker processes
def test_a_streamed_folder_with_workers_resumes_exactly_with_other_workers(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--method", "ict", "--data", f"folder:{write_image_folder(tmp_path / 'imgs')}", "--resolution", "8",
            "--flip", "--model", "tiny", "--model-option", "block_out_channels=[16, 32]", "--steps", "3",
            "--save-every", "1", "--keep-checkpoints", "0", "--output", str(out), *FAST]
    assert main([*args, "--workers", "2"]) == 0
    finished = weights(out)
    assert json.loads((out / "train_config.json").read_text())["data"]["workers"] == 2
    shutil.rmtree(ckpt.checkpoint_dir(out, 3))  # as if the process died during the last step
    shutil.rmtree(out / "unet")
    (out / "checkpoints" / "latest.json").unlink()
    assert main(["train", "--output", str(out), "--resume", "--workers", "0", "--no-progress"]) == 0  # read in-process
    assert same_weights(finished, weights(out))


def test_config_alone_reproduces_the_run_and_flags_override(tmp_path, capsys):
    first = tmp_path / "first"
    args = ["train", "--method", "ict", "--data", "toy:8gaussians", "--steps", "3", "--lr", "3e-3", *TINY_MLP, *FAST]
    assert main([*args, "--output", str(first)]) == 0
    second = tmp_path / "second"
    assert main(["train", "--config", str(first / "train_config.json"), "--output", str(second)]) == 0
    assert same_weights(weights(first), weights(second))
    capsys.readouterr()
    assert main(["train", "--config", str(first / "train_config.json"), "--lr", "0.5", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["lr"] == 0.5 and printed["steps"] == 3 and printed["model_options"]["width"] == 16


def test_resume_after_a_lost_step(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--method", "edm", "--data", "toy:moons", "--steps", "3", "--save-every", "1",
            "--keep-checkpoints", "0", "--output", str(out), *TINY_MLP, *FAST]
    assert main(args) == 0
    finished = weights(out)
    assert main(args) == 1  # the directory holds a run: no silent overwrite
    shutil.rmtree(ckpt.checkpoint_dir(out, 3))  # as if the process died during the last step
    shutil.rmtree(out / "unet")
    (out / "checkpoints" / "latest.json").unlink()
    assert main(["train", "--output", str(out), "--resume", "--no-progress"]) == 0
    assert same_weights(finished, weights(out))
    assert json.loads((out / "training_info.json").read_text())["steps_this_session"] == 1


def test_errors(tmp_path, capsys):
    assert main(["train", "--data", "imagenet", "--output", str(tmp_path / "a")]) == 1
    assert "cannot read the data spec" in capsys.readouterr().err
    assert main(["train", "--method", "cd", "--data", "toy:moons", "--output", str(tmp_path / "b")]) == 1
    assert "--teacher DIR" in capsys.readouterr().err
    assert main(["train", "--data", "toy:moons", "--option", "bogus=1", "--output", str(tmp_path / "c"), *FAST]) == 1
    assert "unknown option(s) for method 'ict': bogus" in capsys.readouterr().err
    assert main(["train", "--data", "toy:moons", "--model", "huge", "--output", str(tmp_path / "d"), *FAST]) == 1
    assert "UNet for images" in capsys.readouterr().err
    rc = main(["train", "--method", "edm", "--data", "toy:moons", "--steps", "20", "--lr", "1e30", "--grad-clip", "0",
               "--save-every", "1", "--output", str(tmp_path / "e"), *TINY_MLP, *FAST])
    assert rc == 3
    err = capsys.readouterr().err
    assert "training stopped" in err and "last good checkpoint" in err


def test_resume_without_a_run_is_an_error(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main(["train", "--data", "toy:moons", "--output", str(missing), "--resume", *FAST]) == 1
    err = capsys.readouterr().err
    assert f"cannot resume {missing}: the directory does not exist; drop --resume" in err
    assert not missing.exists()  # nothing was trained or written
    empty = tmp_path / "empty"
    (empty / "checkpoints" / ".tmp-step-00000002-99").mkdir(parents=True)  # only a half-written save
    assert main(["train", "--data", "toy:moons", "--output", str(empty), "--resume", *FAST]) == 1
    assert f"cannot resume {empty}: the directory holds no checkpoint" in capsys.readouterr().err
    assert not (empty / "train_config.json").exists()


def test_dist_timeout_flag(tmp_path, capsys):
    assert main(["train", "--dist-timeout", "12.5", "--output", str(tmp_path), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["dist_timeout"] == 12.5
    assert main(["train", "--dist-timeout", "0", "--output", str(tmp_path), "--print-config"]) == 1
    assert "dist_timeout must be a positive number of seconds" in capsys.readouterr().err


def test_grad_accum_flag(tmp_path, capsys):
    assert main(["train", "--grad-accum", "4", "--output", str(tmp_path), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["grad_accum"] == 4
    assert main(["train", "--grad-accum", "3", "--batch-size", "64", "--output", str(tmp_path), "--print-config"]) == 1
    assert "grad_accum 3 must divide batch_size 64" in capsys.readouterr().err


def test_flags_are_generated_from_the_config_fields(capsys):
    import dataclasses

    from cmkit.fields import help_of
    from cmkit.training.config import DataConfig, TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for cls in (TrainConfig, DataConfig):
        for f in dataclasses.fields(cls):
            assert help_of(f) and "(default" not in help_of(f).lower(), f.name  # help once, defaults shown by the CLI
            if f.metadata.get("cli", True):
                flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
                assert (flag if f.default is not True else "--no-" + flag[2:]) in text, f.name
    assert "--dist-timeout SECONDS" in text and "(default: 300.0)" in text and "(default: ict)" in text
    # each method's options come from its options dataclass
    assert "steps_per_stage=2000" in text and "num_scales=18" in text and "(needs --teacher)" in text


def test_data_flag_moves_a_configs_images_and_keeps_their_options(tmp_path, capsys):
    """A recipe names its data set's path; --data points it at this machine's copy. The recipe's image options
    (flips, classes, resolution, workers) stay, unless the data switch to or from the 2-D toys."""
    from cmkit.training.config import DataConfig, TrainConfig

    data = DataConfig(kind="zip", path="datasets/cifar10-32x32.zip", resolution=32, flip=True, class_labels=False,
                      workers=3)
    TrainConfig(data=data).to_json(tmp_path / "recipe.json")

    def resolved(*flags):
        assert main(["train", "--config", str(tmp_path / "recipe.json"), *flags, "--print-config"]) == 0
        return json.loads(capsys.readouterr().out)["data"]

    kept = {"resolution": 32, "resize": "crop", "flip": True, "channels": None, "class_labels": False,
            "image_column": None, "label_column": None, "split": None, "workers": 3}
    assert resolved("--data", "folder:/x") == {"kind": "folder", "toy": None, "path": "/x", **kept}
    assert resolved("--data", "prepared:/p", "--resolution", "16") == {"kind": "prepared", "toy": None,
                                                                       "path": "/p", **kept, "resolution": 16}
    assert resolved("--data", "toy:moons") == dataclasses.asdict(DataConfig(kind="toy", toy="moons"))
    assert resolved() == dataclasses.asdict(data)
    hf = DataConfig(kind="hf", path="cifar10", resolution=32, split="test", image_column="img")
    TrainConfig(data=hf).to_json(tmp_path / "recipe.json")
    assert resolved("--data", "hf:/copy")["split"] == "test"  # still hf: the columns and split stay
    assert resolved("--data", "folder:/x")["split"] is None  # hf-only options do not follow the data elsewhere


def test_generated_flags_parse_like_the_hand_written_ones(capsys):
    args = ["train", "--data", "folder:/x", "--resolution", "16", "--no-class-labels", "--channels", "1", "--grad-clip", "0",
            "--ema-rates", "0.9", "0.99", "--no-ema-warmup", "--no-progress", "--dist-timeout", "60", "--output", "o",
            "--option", "loss=l2", "--model-option", "width=8", "--print-config"]
    assert main(args) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["data"] == {"kind": "folder", "toy": None, "path": "/x", "resolution": 16, "resize": "crop", "flip": False,
                           "channels": 1, "class_labels": False, "image_column": None, "label_column": None,
                           "split": None, "workers": 2}
    assert cfg["grad_clip"] is None and cfg["ema_rates"] == [0.9, 0.99] and cfg["ema_warmup"] is False
    assert cfg["progress"] is False and cfg["dist_timeout"] == 60.0 and cfg["output_dir"] == "o"
    assert cfg["objective_options"] == {"loss": "l2"} and cfg["model_options"] == {"width": 8}
    with pytest.raises(SystemExit):
        main(["train", "--channels", "2"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["sct", "scd"])
def test_sct_and_scd_export_a_trigflow_pipeline(method, teacher, tmp_path, capsys):
    from cmkit import ConsistencyModelPipeline

    out = tmp_path / method
    extra = ["--teacher", str(teacher)] if method == "scd" else [*TINY_MLP]
    assert main(["train", "--method", method, *extra, "--data", "toy:moons", "--steps", "2", "--option",
                 "warmup_steps=1", "--output", str(out), *FAST]) == 0  # fmt: skip
    assert f"trained {method} for 2 steps" in capsys.readouterr().out
    assert json.loads((out / "model_index.json").read_text())["cmkit_parameterization"] == "trigflow"
    assert not any(k.startswith("scm_log_variance") for k in weights(out))  # the training-only head is not exported
    pipe = ConsistencyModelPipeline.from_pretrained(out)
    points = pipe(batch_size=4, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert points.shape == (4, 2) and torch.isfinite(points).all()
    # cmkit sample: TrigFlow times are radians (floats); the two given times are the two steps of the chain to 0
    npy = tmp_path / "points.npy"
    assert main(["sample", "--model", str(out), "--timesteps", "1.5", "0.8", "--batch-size", "4", "--out", str(npy),
                 "--device", "cpu"]) == 0
    custom = pipe(batch_size=4, timesteps=[1.5, 0.8], output_type="np", generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_array_equal(np.load(npy), custom)
