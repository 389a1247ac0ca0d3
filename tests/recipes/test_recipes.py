"""The papers' recipes (``recipes/<data set>/*.json``): each parses into a TrainConfig that names an existing network,
and each image recipe runs as written for 50 steps on CPU, scaled down by command-line flags only.

The flags are those a user would pass: fewer steps, a smaller batch and resolution, a narrower network
(``--model-option``), a tiny EDM data-set archive, a tiny teacher snapshot in EDM's / EDM2's ``.pkl`` format (of
the recipe's network, built by cmkit and pickled as those projects do: ``tests/edm_snapshots.py``), hashed LPIPS
weights in the ``lpips`` package's key layout (``tests/lpips_fixture.py``) and the output directory. Every other
field of the recipe is run as written. The recipes are found on disk, so a new one is tested without a new test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from builders import edm_archive
from cmkit.cli import main
from cmkit.data import PATH_KINDS
from cmkit.models.presets import NETWORK_PRESETS, build_preset_for_data
from cmkit.models.unet import UNet2DModel
from cmkit.training.config import TrainConfig
from cmkit.training.objectives import TEACHER_METHODS
from edm_snapshots import edm2_snapshot_data, edm_snapshot_data, write_pickle
from lpips_fixture import lpips_vgg_state_dict

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("*/*.json"))
#: recipes on image files (the papers' data sets); the digits recipes have their own scripts (recipes/digits).
IMAGE_RECIPES = [p for p in RECIPES if json.loads(p.read_text())["data"]["kind"] in PATH_KINDS]
RESOLUTION = 8
ARCHIVE_CLASSES = 3  # builders.edm_archive labels image i as i % 3


def recipe_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def scaled_down_options(model: str) -> dict:
    """Constructor overrides that make preset ``model`` tiny (a few thousand parameters at 8 x 8)."""
    preset = NETWORK_PRESETS[model]
    if preset.network is UNet2DModel:
        levels = len(preset.config["down_block_types"])
        return {"block_out_channels": [8] * levels, "layers_per_block": 1, "attention_head_dim": 8,
                "norm_num_groups": 8, "attn_norm_num_groups": 8}  # fmt: skip
    tiny = {"model_channels": 8, "num_blocks": 1, "channel_mult": [1, 1], "attn_resolutions": [4]}
    if preset.network.__name__ == "EDM2UNet":
        tiny["channels_per_head"] = 8  # one attention head at 4 x 4 (EDM2 gives channels // 64 heads)
    return tiny


def write_tiny_teacher(path: Path, model: str, num_classes, options: dict) -> Path:
    """A snapshot of preset ``model`` (scaled down by ``options``) in EDM's format (EDM2's for EDM2 networks)."""
    torch.manual_seed(0)
    net = build_preset_for_data(model, RESOLUTION, 3, num_classes, **options).eval()
    kwargs = {k: v for k, v in dict(net.config).items() if k != "logvar_channels"}
    if type(net).__name__ == "EDM2UNet":
        data = edm2_snapshot_data(net, inner_kwargs=kwargs)
    else:
        data = edm_snapshot_data(net, inner_name=type(net).__name__, inner_kwargs=kwargs, label_dim=num_classes or 0)
    write_pickle(path, data)
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A tiny data set in the format of EDM's dataset_tool.py (8 x 8 RGB PNGs, class labels in dataset.json)."""
    path = tmp_path_factory.mktemp("data") / "tiny-8x8.zip"
    edm_archive(path, n=8, labels=True, size=RESOLUTION)
    return path


@pytest.fixture(scope="module")
def lpips_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg.pt"
    torch.save(lpips_vgg_state_dict(seed=0), path)
    return path


@pytest.mark.parametrize("path", RECIPES, ids=recipe_id)
def test_every_recipe_parses_and_names_an_existing_network(path):
    config = TrainConfig.from_json(path)
    assert config.model in ("auto", "mlp") or config.model in NETWORK_PRESETS
    assert config.output_dir.startswith(f"runs/{path.parent.name}/")  # runs of one recipe never share a directory
    if path in IMAGE_RECIPES:  # the papers' recipes name their network and, for distillation, a teacher snapshot
        assert json.loads(path.read_text()) == config.to_dict()  # every field written out: no hidden defaults
        assert config.model in NETWORK_PRESETS
        assert config.teacher is None or config.teacher.endswith(".pkl")
        assert (config.teacher is not None) == (config.method in TEACHER_METHODS)


def test_the_recipe_directories_hold_the_papers_runs_and_the_readme_lists_each():
    names = {recipe_id(p) for p in IMAGE_RECIPES}
    for data in ("cifar10", "imagenet64"):
        methods = {TrainConfig.from_json(p).method for p in IMAGE_RECIPES if p.parent.name == data}
        assert methods == {"edm", "cd", "ict", "ect"}, data
        assert {f"{data}/cd-lpips", f"{data}/cd-l2"} <= names
    readme = (RECIPES_DIR / "README.md").read_text()
    for path in IMAGE_RECIPES:
        assert f"| `{path.stem}` |" in readme, f"{recipe_id(path)} has no row in recipes/README.md"


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny convolutions run several times faster so when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # 3-15 s per recipe on 2 shared cores (tiny network, 50 steps, sample grid, export); 11 recipes
@pytest.mark.parametrize("path", IMAGE_RECIPES, ids=recipe_id)
def test_recipe_runs_as_written_for_50_steps_scaled_down_by_flags(path, archive, lpips_weights, tmp_path, one_thread):
    recipe = TrainConfig.from_json(path)
    options = scaled_down_options(recipe.model)
    args = ["train", "--config", str(path), "--steps", "50", "--batch-size", "2", "--resolution", str(RESOLUTION),
            "--num-samples", "4", "--data", f"zip:{archive}", "--output", str(tmp_path / "run")]
    for key, value in options.items():
        args += ["--model-option", f"{key}={json.dumps(value)}"]
    if recipe.teacher is not None:
        classes = ARCHIVE_CLASSES if recipe.data.class_labels else None
        args += ["--teacher", str(write_tiny_teacher(tmp_path / "teacher.pkl", recipe.model, classes, options))]
    if recipe.objective_options.get("loss") == "lpips":
        args += ["--option", f"lpips_weights={lpips_weights}", "--option", "lpips_resize=16"]
    assert main(args) == 0

    ran = json.loads((tmp_path / "run" / "train_config.json").read_text())
    scaled = {"steps": 50, "batch_size": 2, "num_samples": 4, "output_dir": str(tmp_path / "run"),
              "teacher": ran["teacher"], "model_options": ran["model_options"],
              "objective_options": ran["objective_options"]}  # fmt: skip
    assert ran == {**json.loads(path.read_text()), **scaled, "data": ran["data"]}  # nothing else changed
    assert ran["data"] == {**json.loads(path.read_text())["data"], "kind": "zip", "path": str(archive),
                           "resolution": RESOLUTION}  # the recipe's flips, classes, workers kept
    assert ran["model_options"] == {**recipe.model_options, **options}
    uses_lpips = recipe.objective_options.get("loss") == "lpips"
    lpips = {"lpips_weights": str(lpips_weights), "lpips_resize": 16} if uses_lpips else {}
    assert ran["objective_options"] == {**recipe.objective_options, **lpips}
    info = json.loads((tmp_path / "run" / "training_info.json").read_text())
    assert info["parameterization"] == ("edm" if recipe.method == "edm" else "consistency")
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = torch.tensor([entry["loss"] for entry in logged if "loss" in entry])
    assert len(losses) and torch.isfinite(losses).all()
