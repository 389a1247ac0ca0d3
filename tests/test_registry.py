"""The component registry: diffusers names <-> cmkit classes, and registering new ones."""

import pytest
import torch
from cmkit import CMStochasticIterativeScheduler
from cmkit.models.mlp import MLPNet
from cmkit.registry import component_entry, register_component_class, resolve_component_class


def test_registry_maps_diffusers_names_to_cmkit_classes():
    from cmkit import TCDScheduler

    assert resolve_component_class("diffusers", "CMStochasticIterativeScheduler") is CMStochasticIterativeScheduler
    assert resolve_component_class("diffusers", "TCDScheduler") is TCDScheduler
    assert resolve_component_class("cmkit", "MLPNet") is MLPNet
    assert component_entry(CMStochasticIterativeScheduler()) == ("diffusers", "CMStochasticIterativeScheduler")
    assert component_entry(TCDScheduler()) == ("diffusers", "TCDScheduler")
    assert component_entry(MLPNet(width=4, num_blocks=0, embedding_dim=2)) == ("cmkit", "MLPNet")
    with pytest.raises(ValueError, match="cannot save a component of type"):
        component_entry(torch.nn.Linear(1, 1))


def test_register_component_class_extends_the_registry(monkeypatch):
    from cmkit import registry

    monkeypatch.setattr(registry, "COMPONENT_CLASSES", dict(registry.COMPONENT_CLASSES))

    class MyNet(MLPNet):
        pass

    register_component_class("cmkit", "MyNet", MyNet)
    assert resolve_component_class("cmkit", "MyNet") is MyNet
    assert component_entry(MyNet(width=4, num_blocks=0, embedding_dim=2)) == ("cmkit", "MyNet")
    with pytest.raises(ValueError, match="module:attribute"):
        register_component_class("cmkit", "X", "no_colon")
