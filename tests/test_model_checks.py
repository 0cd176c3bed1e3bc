"""The client's check of a received model: an imprint block is found, honest models are not flagged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedpriv.data.loading import load_split
from fedpriv.data.specs import resolve_spec
from fedpriv.imprint import ImprintedModel, thresholds_from
from fedpriv.model_checks import inspect_model
from fedpriv.models import build_model, wire_state

PHOTOS = resolve_spec("embedded-photos")
HONEST = ["convnet", "convnet-gn", "shallow-cnn", "resnet20", "original-lenet", "complex-lenet"]


@pytest.mark.parametrize("name", HONEST)
def test_honest_models_fresh_and_trained_are_not_flagged(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, 3)
    assert inspect_model(wire_state(model)) == []
    train = load_split("embedded-photos", "", "train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for start in range(0, 256, 32):  # a few steps of training
        loss = F.cross_entropy(model(PHOTOS.normalize(train.images[start : start + 32].float() / 255)),
                               train.labels[start : start + 32])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert inspect_model(wire_state(model)) == []


@pytest.mark.parametrize("bins", [4, 64])
def test_an_imprint_block_is_found_by_its_rank_one_measuring_layer(bins: int) -> None:
    torch.manual_seed(0)
    body = build_model("convnet", 10, 3)
    model = ImprintedModel(body, (3, 32, 32), thresholds_from(torch.randn(200, 3, 32, 32), bins))
    found = [f.parameter for f in inspect_model(wire_state(model))]
    assert "imprint.measure.weight" in found
    assert all(name.startswith("imprint.") for name in found)  # the honest body stays unflagged
