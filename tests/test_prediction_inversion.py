"""Prediction-vector inversion on real digits: truncation, the reference transform, alignment, aux types."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedpriv.attacks import AttackSettings, AttackTarget, AuxiliaryData, build_attack
from fedpriv.attacks.decoder_training import fit_decoder
from fedpriv.attacks.prediction_inversion import PredictionInverter, adam, inversion_input, predict, released_top
from fedpriv.data.auxiliary import distinct_images, split_with_aux
from fedpriv.data.loading import load_split
from fedpriv.data.specs import resolve_spec
from fedpriv.defenses import build_defense
from fedpriv.errors import ConfigError
from fedpriv.leaks import PredictionLeak
from fedpriv.metrics import psnr_per_image
from fedpriv.models import YangClassifier
from fedpriv.protocols.fedsgd import SentLabels
from fedpriv.protocols.predictions import SentPredictions
from fedpriv.validation import validated_config
from fedpriv.wire import decode_fields, encode_fields

DIGITS = resolve_spec("embedded-digits")
RUN = {"dataset": "embedded-digits", "model": "yang-mnist-small", "protocol": "predictions",
       "attacks": "prediction-inversion", "aux-samples": 500}


def test_truncation_keeps_the_top_entries_unscaled() -> None:
    p = torch.softmax(torch.randn(6, 10, generator=torch.Generator().manual_seed(0)), 1)
    released = build_defense("truncate:3").release(p)  # type: ignore[attr-defined]
    assert ((released > 0).sum(1) == 3).all()
    top = p.topk(3, 1)
    assert torch.equal(released.gather(1, top.indices), top.values)
    assert released_top(released) == 3 and released_top(p) == 10
    assert build_defense("truncate:3").released_entries(10) == 3  # type: ignore[attr-defined]
    assert build_defense("truncate:12").released_entries(10) == 10  # type: ignore[attr-defined]


def test_inversion_input_follows_the_reference_transform() -> None:
    eye = torch.eye(10)
    assert torch.allclose(inversion_input(eye, 1), 50 * eye)  # m = 1: 50 e_c
    assert torch.allclose(inversion_input(eye, 10), 1000 * eye)  # m = K: the floor shifted up
    p = torch.softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(1)) * 3, 1)
    z = inversion_input(p, 4)
    values, index = p.topk(4, 1)
    expected = torch.log(values) + 50
    expected = expected + F.relu(-expected.min(1, keepdim=True).values)
    assert torch.allclose(z.gather(1, index), expected) and ((z > 0).sum(1) == 4).all()
    truncated = build_defense("truncate:2").release(p)  # type: ignore[attr-defined]
    assert torch.isfinite(inversion_input(truncated, 10)).all()  # zeros count as log 0 = -1000


def test_what_protocols_send_beside_the_arrays_round_trips_field_by_field() -> None:
    p = torch.rand(3, 10)
    sent = decode_fields(SentPredictions, encode_fields(SentPredictions(p)))
    assert torch.equal(sent.predictions, p)
    assert decode_fields(SentPredictions, encode_fields(SentPredictions())).predictions is None
    labels = decode_fields(SentLabels, encode_fields(SentLabels("train", torch.tensor([1, 2]))))
    assert labels.model_mode == "train" and labels.labels.dtype == torch.long and labels.labels.tolist() == [1, 2]
    assert decode_fields(SentLabels, {}) == SentLabels()  # a reply without the record: the defaults


@pytest.fixture(scope="module")
def trained() -> dict:
    """A digit classifier trained briefly on 1,500 real digits, an aux set and unseen victims."""
    train = load_split("embedded-digits", "", "train")
    pixels = train.images.float() / 255
    torch.manual_seed(0)
    classifier = YangClassifier(10, 1, width=16)
    optimizer = adam(classifier.parameters(), 2e-3)
    for _ in range(3):
        classifier.train()
        for start in range(0, 1500, 64):
            x, y = pixels[start : start + 64], train.labels[start : start + 64]
            loss = F.cross_entropy(classifier(DIGITS.normalize(x)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    classifier.eval()
    return {"classifier": classifier, "aux": pixels[1500:2700], "victims": pixels[3000:3100],
            "aux_uint8": train.images[1500:2700], "aux_labels": train.labels[1500:2700]}


def _inverter(trained: dict, top: int) -> PredictionInverter:
    torch.manual_seed(0)
    inverter = PredictionInverter(10, 1, top, width=16)
    report = fit_decoder(inverter, predict(trained["classifier"], trained["aux"], DIGITS), trained["aux"], 12, 64,
                         adam(inverter.parameters(), 2e-3), 0.1, torch.Generator().manual_seed(0))
    assert 1 <= report.best_epoch <= 12 and report.images_per_second > 0
    return inverter


def test_aligned_inversion_beats_the_mean_digit_and_the_unaligned_inverter(trained: dict) -> None:
    victims = trained["victims"]
    leaked = build_defense("truncate:1").release(predict(trained["classifier"], victims, DIGITS))  # type: ignore[attr-defined]
    top1, whole = _inverter(trained, 1), _inverter(trained, 10)
    with torch.no_grad():
        aligned, unaligned = top1(leaked), whole(leaked)
    mean_digit = trained["aux"].mean(0, keepdim=True).expand_as(victims)
    scores = {name: float(psnr_per_image(images, victims).mean())
              for name, images in (("aligned", aligned), ("unaligned", unaligned), ("mean", mean_digit))}
    assert scores["aligned"] > scores["mean"] + 0.5, scores  # the class alone already beats the mean digit
    assert scores["aligned"] > scores["unaligned"] + 1.0, scores  # alignment matters at m = 1


def test_attack_trains_per_truncation_level_and_keeps_the_victims_order(trained: dict) -> None:
    settings = AttackSettings(options={"epochs": 3, "width": 8, "batch": 64})
    attack = build_attack("prediction-inversion", settings)
    attack.prepare(DIGITS, AuxiliaryData(trained["aux_uint8"], trained["aux_labels"]))
    vectors = predict(trained["classifier"], trained["victims"][:4], DIGITS)
    targets = [AttackTarget(PredictionLeak(build_defense(spec).release(vectors)), seed=i)  # type: ignore[attr-defined]
               for i, spec in enumerate(("truncate:1", "truncate:3"))]
    targets.append(AttackTarget(PredictionLeak(vectors), seed=2))
    results = attack.reconstruct(trained["classifier"], DIGITS, targets)
    assert [r.fields["inverter_top"] for r in results] == [1.0, 3.0, 10.0]
    assert all(r.ordered and r.images.shape == (4, 1, 32, 32) and r.gallery.shape == (10, 1, 32, 32) for r in results)
    assert sorted(attack.inverters) == [1, 3, 10]  # type: ignore[attr-defined]
    unaligned = build_attack(
        "prediction-inversion", AttackSettings(options={"epochs": 1, "width": 8, "align": False})
    )
    unaligned.prepare(DIGITS, AuxiliaryData(trained["aux_uint8"], trained["aux_labels"]))
    (result,) = unaligned.reconstruct(trained["classifier"], DIGITS, targets[:1])
    assert result.fields["inverter_top"] == 10.0 and result.fields["top_m"] == 1.0


def test_auxiliary_types_split_the_data_as_declared() -> None:
    labels = load_split("embedded-digits", "", "train").labels.numpy()
    parts, aux = split_with_aux(labels, 4, "iid", 0.5, 0, 300, "generic", 10)
    assert (labels[aux] >= 5).all() and len(aux) == 300
    assert all((labels[p] < 5).all() for p in parts) and sum(map(len, parts)) == int((labels < 5).sum())
    parts, aux = split_with_aux(labels, 4, "iid", 0.5, 0, 300, "same", 10)
    assert not set(aux) & set(np.concatenate(parts)) and sum(map(len, parts)) == len(labels) - 300
    with pytest.raises(ConfigError, match=r"aux-samples=2001 exceeds the 2000 .*valid: 1..2000"):
        split_with_aux(labels, 4, "iid", 0.5, 0, 2001, "generic", 10)
    with pytest.raises(ConfigError, match="valid: 0..3996"):
        split_with_aux(labels, 4, "iid", 0.5, 0, 3999, "same", 10)
    photos = load_split("embedded-photos", "", "train")
    grey = distinct_images(photos, 50, 0, channels=1, size=32)
    assert grey.images.shape == (50, 1, 32, 32) and grey.images.dtype == torch.uint8
    with pytest.raises(ConfigError, match="exceeds the 2000 training images"):
        distinct_images(photos, 2001, 0, 1, 32)


@pytest.mark.parametrize(("change", "message"), [
    ({"defense": "truncate:11"}, "valid: truncate:1..truncate:10"),
    ({"defense": "truncate:0"}, r"M='0' is not an integer in 1\.\.100000"),
    ({"defense-overrides": "1=ats:3-1-7"}, "acts on inputs, but protocol 'predictions' defends predictions"),
    ({"aux-type": "nearby"}, "valid: same, generic, distinct"),
    ({"attacks": "inverting-gradients"}, "attacks for it: prediction-inversion"),
    ({"joint-training": True}, "set server-pretrain-epochs >= 1"),
    ({"joint-training": True, "server-pretrain-epochs": 1, "aux-type": "generic"}, "needs aux-type='same'"),
    ({"joint-training": True, "server-pretrain-epochs": 1, "attacks": "inverting-gradients"},
     r"hands its inverter to an attack that trains one \(prediction-inversion\)"),
    ({"aux-type": "distinct", "aux-dataset": "embedded-digits"}, "needs another one"),
    ({"prediction-samples": 0}, "prediction-samples=0 is out of range; valid: >= 1"),
    ({"attack.prediction-inversion.align": "maybe"}, "align='maybe' has the wrong type; expected a bool"),
])
def test_bad_prediction_settings_fail_with_the_valid_values(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validated_config(RUN | change)


def test_prediction_inversion_needs_an_auxiliary_split() -> None:
    attack = build_attack("prediction-inversion", AttackSettings())
    with pytest.raises(ConfigError, match="set aux-samples >= 2"):
        attack.prepare(DIGITS, None)
