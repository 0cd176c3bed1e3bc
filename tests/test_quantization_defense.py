"""Update quantization (``quantize:BITS``): levels, what the server observes, and bad specs."""

from __future__ import annotations

import pytest
import torch

from fedpriv.client_task import run_client_round
from fedpriv.config import RunConfig
from fedpriv.data.specs import resolve_spec
from fedpriv.defenses import build_defense
from fedpriv.defenses.quantization import Quantization
from fedpriv.errors import ConfigError
from fedpriv.leaks import GradientLeak, Leak, UpdateLeak
from fedpriv.models import build_model, wire_state
from fedpriv.protocols import PROTOCOLS
from fedpriv.validation import validated_config

RUN = {"dataset": "embedded-photos", "model": "convnet", "num-server-rounds": 1, "attack-clients": "0",
       "batch-size": 2, "local-steps": 2, "attack-progress": 0}


def _observed(run: dict[str, object]) -> tuple[Leak, list[str]]:
    """The leak the server derives from client 0's reply in round 1."""
    config = validated_config(run)
    torch.manual_seed(config.seed)
    spec = resolve_spec(config.dataset)
    model = build_model(config.model, spec.num_classes, spec.channels)
    names = [n for n, _ in model.named_parameters()]
    broadcast = wire_state(model)
    reply = run_client_round(config, 0, 2, dict(broadcast), 1)
    protocol = PROTOCOLS.get(config.protocol)
    return protocol.observe(config, broadcast, reply.state, names, reply.num_examples, reply.sent), names


def _tensors(leak: Leak) -> tuple[torch.Tensor, ...]:
    if isinstance(leak, GradientLeak):
        return leak.gradients
    assert isinstance(leak, UpdateLeak)
    return leak.deltas


@pytest.mark.parametrize("bits", [1, 2, 8])
def test_each_tensor_is_rounded_to_its_nearest_level(bits: int) -> None:
    update = {"w": torch.randn(40, 25, generator=torch.Generator().manual_seed(bits)), "b": torch.zeros(3)}
    sent = Quantization(bits).protect(update, torch.Generator())
    assert sent.keys() == update.keys() and all(sent[k].shape == update[k].shape for k in update)
    step = update["w"].abs().max() / 2 ** (bits - 1)
    units = sent["w"] / step
    torch.testing.assert_close(units, units.round(), atol=1e-4, rtol=0)  # on the grid of the step
    assert units.round().abs().max() <= 2 ** (bits - 1)
    assert (sent["w"] - update["w"]).abs().max() <= step / 2 + 1e-6  # the nearest level
    assert torch.equal(sent["b"], update["b"])  # an all-zero tensor is sent as it is


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
def test_the_server_observes_the_quantized_update_and_fewer_bits_leak_less(protocol: str) -> None:
    run = RUN | {"protocol": protocol, "attacks": "label-inference"}
    plain, _ = _observed(run)
    similarity = {}
    for bits in (1, 2, 8):
        leak, _ = _observed(run | {"defense": f"quantize:{bits}"})
        for sent, true in zip(_tensors(leak), _tensors(plain), strict=True):
            step = sent.abs().max() / 2 ** (bits - 1)  # the peak is sent exactly, so it gives the step
            units = sent / step
            torch.testing.assert_close(units, units.round(), atol=2e-2, rtol=0)  # on the grid (w - lr g rounds)
            assert (sent - true).abs().max() <= step / 2 + 1e-4 * true.abs().max()  # the nearest level
        flat = torch.cat([t.flatten() for t in _tensors(leak)])
        truth = torch.cat([t.flatten() for t in _tensors(plain)])
        similarity[bits] = float(torch.nn.functional.cosine_similarity(flat, truth, dim=0))
    assert similarity[1] < similarity[2] < similarity[8] and similarity[8] > 0.999


@pytest.mark.parametrize(("run", "message"), [
    ({"defense": "quantize:0"}, "BITS='0' is not an integer in 1..16"),
    ({"defense": "quantize:x"}, "BITS='x' is not an integer in 1..16"),
    ({"defense": "quantize:8", "protocol": "predictions", "model": "yang-mnist-small", "dataset": "embedded-digits",
      "attacks": "prediction-inversion", "aux-samples": 256},
     "defense 'quantize:8' acts on updates, but protocol 'predictions' defends predictions"),
])
def test_bad_quantization_specs_are_refused_before_any_work(run: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validated_config(RUN | run)


def test_the_spec_round_trips_and_is_listed() -> None:
    defense = build_defense("quantize:4")
    assert isinstance(defense, Quantization) and defense.spec == "quantize:4" and defense.acts_on == "updates"
    assert RunConfig(defense="quantize:4").defense_for(0) == "quantize:4"
