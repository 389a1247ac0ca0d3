import copy
import json
import operator
import pickle

import pytest

from cmkit.config import ConfigMixin, FrozenConfig, register_to_config


class Thing(ConfigMixin):
    config_name = "thing_config.json"
    saved_class_name = "DiffusersThing"

    @register_to_config
    def __init__(self, a: int = 1, b: tuple = (1, 2), c: str = "x"):
        self.a = a


def test_config_records_defaults_and_args():
    t = Thing(5, c="y")
    assert dict(t.config) == {"a": 5, "b": [1, 2], "c": "y"}
    assert t.config.a == 5
    with pytest.raises(AttributeError):
        t.config.missing  # noqa: B018
    with pytest.raises(TypeError):
        t.config["a"] = 3  # type: ignore[index]


def test_config_is_a_read_only_dict():
    """A dict (diffusers' from_config takes only dicts) whose every mutator raises; it still pickles and copies."""
    t = Thing(5)
    assert isinstance(t.config, dict) and t.config == {"a": 5, "b": [1, 2], "c": "x"}
    mutators = [
        lambda c: c.update(a=1), lambda c: c.pop("a"), lambda c: c.popitem(), lambda c: c.setdefault("z", 1),
        lambda c: c.clear(), lambda c: operator.delitem(c, "a"), lambda c: operator.ior(c, {"a": 1}),
    ]
    for mutate in mutators:
        with pytest.raises(TypeError, match="read-only"):
            mutate(t.config)
    assert t.config == {"a": 5, "b": [1, 2], "c": "x"}
    for clone in (copy.deepcopy(t.config), copy.copy(t.config), pickle.loads(pickle.dumps(t.config))):
        assert type(clone) is FrozenConfig and clone == t.config and clone.c == "x"


def test_save_load_round_trip(tmp_path):
    t = Thing(3)
    path = t.save_config(tmp_path)
    data = json.loads(path.read_text())
    assert data["_class_name"] == "DiffusersThing" and "_diffusers_version" in data
    back = Thing.from_config(Thing.load_config(tmp_path))
    assert dict(back.config) == dict(t.config)


def test_unknown_keys_warn_and_missing_file_errors(tmp_path):
    with pytest.warns(UserWarning, match="zzz"):
        Thing.from_config({"a": 2, "zzz": 1, "_meta": 0})
    with pytest.raises(FileNotFoundError, match="thing_config.json"):
        Thing.load_config(tmp_path)
    (tmp_path / "thing_config.json").write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        Thing.load_config(tmp_path)


def test_config_update_is_saved(tmp_path):
    t = Thing()
    t.register_config_update(c="tuned")
    assert Thing.from_config(Thing.load_config(t.save_config(tmp_path))).config.c == "tuned"


