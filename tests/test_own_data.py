"""A researcher's own data (ImageFolder, Hugging Face on disk, unofficial CIFAR exports), models and checkpoints."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from fedpriv.attacks import gradient_matching as gm
from fedpriv.config import RunConfig
from fedpriv.data import archives
from fedpriv.data.loading import check_available, dataset_spec, load_split
from fedpriv.errors import ConfigError
from fedpriv.models import build_model, check_model_fits, check_model_name
from fedpriv.results import RunFolder
from fedpriv.round_attacks import AttackHarness
from fedpriv.run_page import write_index
from fedpriv.run_setup import initial_state
from fedpriv.validation import validated_config
from tests.observed import observed_client

PHOTOS = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea}


def make_image_folder(root: Path, per_class: int = 6) -> Path:
    """An ImageFolder tree of real photographs: crops of three skimage photos, mixed sizes and formats."""
    for split, offset in (("train", 0), ("test", 300)):
        for name, photo in PHOTOS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            array = photo()
            for i in range(per_class):
                size = 40 + 8 * i
                crop = array[offset // 3 + 10 * i: offset // 3 + 10 * i + size, 20 * i: 20 * i + size]
                Image.fromarray(crop).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_image_folder_loads_resized_with_computed_constants(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "photos")
    name = f"folder:{root}"
    check_available(name, "", size=24, channels=3)
    train = load_split(name, "", "train", size=24, channels=3)
    assert train.images.shape == (18, 3, 24, 24) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6  # astronaut, chelsea, coffee (sorted)
    spec = dataset_spec(name, "dataset", 24, 3)
    pixels = train.images.double() / 255
    assert spec.num_classes == 3 and spec.shape == (3, 24, 24)
    assert spec.mean == pytest.approx(tuple(pixels.mean(dim=(0, 2, 3)).tolist()))
    grey = load_split(name, "", "train", size=16, channels=1)
    assert grey.images.shape == (18, 1, 16, 16)
    given = dataset_spec(name, "0.5,0.5,0.5/0.25,0.25,0.25", 24, 3)
    assert given.mean == (0.5, 0.5, 0.5) and given.std == (0.25, 0.25, 0.25)


def test_bad_image_folders_are_clear_errors(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "photos", per_class=2)
    shutil.rmtree(root / "test")
    with pytest.raises(ConfigError, match=f"{root / 'test'} does not exist; the layout is"):
        check_available(f"folder:{root}", "")
    empty = make_image_folder(tmp_path / "empty", per_class=2)
    (empty / "train" / "nothing").mkdir()
    with pytest.raises(ConfigError, match="nothing"):
        check_available(f"folder:{empty}", "")
    broken = make_image_folder(tmp_path / "broken", per_class=2)
    (broken / "train" / "coffee" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="cannot read image .*bad.png"):
        check_available(f"folder:{broken}", "")
    with pytest.raises(ConfigError, match="is not a folder"):
        validated_config({"dataset": f"folder:{tmp_path / 'missing'}"})


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_hugging_face_data_sets_on_disk(tmp_path: Path, layout: str) -> None:
    import datasets

    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    photo = data.astronaut()
    split = {
        name: datasets.Dataset.from_dict(
            {"img": [Image.fromarray(photo[i * 40: i * 40 + 48, :48]) for i in range(4)], "label": [0, 1, 0, 1]},
            features=features,
        )
        for name in ("train", "test")
    }
    root = tmp_path / "hf"
    if layout == "save_to_disk":
        datasets.DatasetDict(split).save_to_disk(str(root))
    else:
        root.mkdir()
        for name, table in split.items():
            table.to_parquet(str(root / f"{name}.parquet"))
    name = f"hf:{root}"
    check_available(name, "")
    train = load_split(name, "", "train")
    assert train.images.shape == (4, 3, 32, 32) and train.labels.tolist() == [0, 1, 0, 1]
    assert dataset_spec(name).num_classes == 2


def _cifar_export(root: Path, payload: object | None = None) -> None:
    """A CIFAR-10-format folder with our own images (so other checksums than the official ones)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for file, _ in archives.CIFAR_ARCHIVES["cifar10"].files["train"] + archives.CIFAR_ARCHIVES["cifar10"].files["test"]:
        batch = payload if payload is not None else {
            b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (folder / file).write_bytes(pickle.dumps(batch))


class _Exploit:
    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (Path("pwned-by-cifar"),))


def test_unofficial_cifar_exports_need_data_verify_false_and_cannot_run_code(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _cifar_export(tmp_path / "lab")
    with pytest.raises(ConfigError, match="corrupt or not the official file"):
        check_available("cifar10", tmp_path / "lab")
    with pytest.warns(UserWarning, match="data-verify=false"):
        check_available("cifar10", tmp_path / "lab", verify=False)
    train = load_split("cifar10", tmp_path / "lab", "train", verify=False)
    assert train.images.shape == (20, 3, 32, 32) and train.labels[:4].tolist() == [0, 1, 2, 3]
    _cifar_export(tmp_path / "evil", {b"data": _Exploit(), b"labels": [0]})
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="refusing .* in an unverified CIFAR batch"):
        load_split("cifar10", tmp_path / "evil", "train", verify=False)
    assert not (tmp_path / "pwned-by-cifar").exists()


USER_MODEL = '''
import torch

from fedpriv.attacks import gradient_matching as gm
from torch import nn


def small_cnn(num_classes, channels):
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 16 * 16, num_classes))


def not_a_module(num_classes, channels):
    return "a string"


def wrong_output(num_classes, channels):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
'''


@pytest.fixture
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "lab_models.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "lab_models"


def test_models_by_import_path_and_their_errors(user_models: str) -> None:
    model = build_model(f"{user_models}:small_cnn", 10, 3)
    assert isinstance(model, torch.nn.Module)
    check_model_fits(f"{user_models}:small_cnn", 10, 3, 32)
    with pytest.raises(ConfigError, match="cannot import 'no_such_lab'"):
        check_model_name("no_such_lab:make")
    with pytest.raises(ConfigError, match="has no callable 'missing'"):
        check_model_name(f"{user_models}:missing")
    with pytest.raises(ConfigError, match="returned str, not a torch nn.Module"):
        build_model(f"{user_models}:not_a_module", 10, 3)
    expected = r"maps inputs \(2, 3, 32, 32\) to \(2, 3\); expected logits of shape \(2, 10\)"
    with pytest.raises(ConfigError, match=expected):
        check_model_fits(f"{user_models}:wrong_output", 10, 3, 32)


def test_every_gradient_attack_runs_on_a_user_model_and_records_its_engine(user_models: str) -> None:
    from fedpriv.data.specs import resolve_spec

    torch.manual_seed(0)
    name = f"{user_models}:small_cnn"
    model = build_model(name, 100).eval()
    observed = observed_client(0, ("inverting-gradients", "translation-aware", "policy-aware"))
    x, y = observed.truth.images, observed.truth.labels
    spec = resolve_spec("cifar100")
    loss = torch.nn.functional.cross_entropy(model(spec.normalize(x)), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    leak = dataclasses.replace(observed.leak, gradients=tuple(grads),
                               parameter_names=tuple(n for n, _ in model.named_parameters()))
    client = dataclasses.replace(observed, leak=leak, defense_spec="ats:3-1-7")
    config = RunConfig(model=name, attacks="inverting-gradients,translation-aware,policy-aware", attack_iterations=5,
                       attack_progress=0, plugin_options={"attack.policy-aware.max-hypotheses": 2})
    rows = AttackHarness(config, spec).run_round(model, [client], 1)
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert all(r["engine"] in gm.ENGINES[1:] for r in rows)


def test_initial_checkpoints_fit_or_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = dataset_spec("embedded-photos")
    trained = build_model("convnet", 10)
    torch.nn.init.constant_(trained.fc.bias, 0.25)
    torch.save(trained.state_dict(), tmp_path / "good.pt")
    config = RunConfig(dataset="embedded-photos", model="convnet", initial_checkpoint=str(tmp_path / "good.pt"))
    assert torch.equal(initial_state(config, spec)["fc.bias"], torch.full((10,), 0.25))
    torch.save(build_model("resnet20", 10).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"other.pt does not fit model 'convnet': missing \['features"):
        initial_state(dataclasses.replace(config, initial_checkpoint=str(tmp_path / "other.pt")), spec)
    (tmp_path / "code.pt").write_bytes(pickle.dumps({"model": _Exploit()}))
    with pytest.raises(ConfigError, match="cannot be read as a plain state dict"):
        initial_state(dataclasses.replace(config, initial_checkpoint=str(tmp_path / "code.pt")), spec)
    assert not (tmp_path / "pwned-by-cifar").exists()


def test_pretrain_writes_a_checkpoint_that_starts_a_federation(tmp_path: Path) -> None:
    from fedpriv.cli import main

    out = tmp_path / "convnet.pt"
    assert main(["pretrain", "--dataset", "embedded-photos", "--model", "convnet", "--epochs", "3",
                 "--batch-size", "128", "--out", str(out), "--no-progress"]) == 0
    record = json.loads(out.with_suffix(".pt.json").read_text())
    assert record["test_accuracy"] > 0.25  # 10 classes: chance is 0.1 (measured: 0.36 after 3 epochs)
    config = RunConfig(dataset="embedded-photos", model="convnet", initial_checkpoint=str(out))
    state = initial_state(config, dataset_spec("embedded-photos"))
    assert torch.equal(state["fc.weight"], torch.load(out, weights_only=True)["fc.weight"])


def test_index_html_summarises_the_run(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.write_json("config.json", {"run-config": {"dataset": "embedded-photos", "attacks": "inverting-gradients"},
                                      "clients": {"0": {"defense": "none", "attacks": ["inverting-gradients"]}}})
    harness = AttackHarness(RunConfig(attacks="inverting-gradients,label-inference", attack_iterations=3,
                                      attack_progress=0), dataset_spec("cifar100"))
    rows = harness.run_round(
        build_model("convnet", 100).eval(), [observed_client(0, ("inverting-gradients", "label-inference"))], 1, folder)
    folder.append(folder.metrics_path, rows)
    folder.append(folder.rounds_path, [{"round": 0, "accuracy": 0.1}, {"round": 1, "accuracy": 0.2, "sampled": [0]}])
    folder.write_plot()
    write_index(folder)
    page = (tmp_path / "index.html").read_text()
    assert "embedded-photos" in page and 'src="psnr_per_round.png"' in page
    assert 'src="reconstructions/round001_client0000_inverting-gradients.png"' in page
    assert "label-inference" in page and "<td>0.200</td>" in page
    grid = Image.open(tmp_path / "reconstructions" / "round001_client0000_inverting-gradients.png")
    assert grid.width >= 4 * 32  # scaled up
