"""Focused tests for the arithmetic: split sizes, top-k, FLOPs, the base CNN, config validation."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch

from animalcls.build import create_model
from animalcls.data import split_indices, split_sizes
from animalcls.errors import AnimalclsError
from animalcls.metrics import TopKMeter, confusion_matrix, per_class_accuracy, topk_correct
from animalcls.models import BaseCNN
from animalcls.profile import profile_model


def test_paper_split_sizes():
    assert split_sizes(6270, [0.85, 0.05, 0.10]) == (5330, 313, 627)


def test_split_is_seeded_disjoint_and_complete():
    a = split_indices(6270, [0.85, 0.05, 0.10], seed=3)
    b = split_indices(6270, [0.85, 0.05, 0.10], seed=3)
    c = split_indices(6270, [0.85, 0.05, 0.10], seed=4)
    assert [len(a[k]) for k in ("train", "val", "test")] == [5330, 313, 627]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    together = np.concatenate([a["train"], a["val"], a["test"]])
    assert sorted(together.tolist()) == list(range(6270))


def test_topk_against_hand_made_logits():
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # label 1: top-1 hit
            [0.5, 0.4, 0.3, 0.0, 0.0, 0.0],  # label 2: third best -> top-3 hit
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 4: fifth best -> top-5 hit
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 5: sixth -> miss everywhere
        ]
    )
    target = torch.tensor([1, 2, 4, 5])
    assert topk_correct(logits, target) == {1: 1, 3: 2, 5: 3}
    meter = TopKMeter()
    meter.update(logits[:2], target[:2], torch.tensor(1.0))
    meter.update(logits[2:], target[2:], torch.tensor(3.0))
    assert meter.count == 4
    assert meter.loss == pytest.approx(2.0)
    assert [meter.accuracy(k) for k in (1, 3, 5)] == [25.0, 50.0, 75.0]


def test_topk_with_fewer_classes_than_k():
    logits = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    assert topk_correct(logits, torch.tensor([0, 0])) == {1: 1, 3: 2, 5: 2}


def test_confusion_and_per_class_accuracy():
    cm = confusion_matrix(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1]), 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    acc = per_class_accuracy(cm)
    assert acc[:3].tolist() == [50.0, 100.0, 0.0] and torch.isnan(acc[3])


def test_base_cnn_flops_at_112():
    stats = profile_model(BaseCNN(151), 112)
    assert stats["gflops"] == pytest.approx(0.711, abs=0.0005)
    assert stats["gmacs_fvcore"] == pytest.approx(0.356, abs=0.0005)


def test_base_cnn_shapes_and_options():
    plain = BaseCNN(151)
    assert plain.fc1.in_features == 3200
    full = BaseCNN(10, batch_norm=True, dropout=0.5)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in full.modules()) == 3
    assert sum(isinstance(m, torch.nn.Dropout) for m in full.modules()) == 1
    out = full.eval()(torch.zeros(2, 3, 112, 112))
    assert out.shape == (2, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-5)  # log_softmax output


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_large"])
def test_torchvision_models_get_a_new_head(name):
    model = create_model(name, 7, pretrained=False).eval()
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 7)


def test_offline_pretrained_error_names_the_file(monkeypatch):
    from torchvision.models import get_model_weights

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    weights_cls = type(get_model_weights("resnet18").DEFAULT)
    monkeypatch.setattr(weights_cls, "get_state_dict", offline)
    with pytest.raises(AnimalclsError) as error:
        create_model("resnet18", 5, pretrained=True)
    text = str(error.value)
    assert "resnet18-f37072fd.pth" in text and "checkpoints" in text and "model.weights=" in text


def test_local_weights_file_is_loaded(tmp_path):
    reference = create_model("mobilenet_v3_small", 1000, pretrained=False)
    from torchvision.models import get_model

    imagenet = get_model("mobilenet_v3_small", weights=None)
    torch.save(imagenet.state_dict(), tmp_path / "w.pth")
    model = create_model("mobilenet_v3_small", 4, weights=str(tmp_path / "w.pth"))
    assert torch.equal(model.features[0][0].weight, imagenet.features[0][0].weight)
    assert not torch.equal(model.features[0][0].weight, reference.features[0][0].weight)


def test_the_machine_is_named_by_its_cpu_and_its_speed_flags(monkeypatch):
    from animalcls import machine

    info = {"model name": "Some Xeon", "flags": "fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16"}
    monkeypatch.setattr(machine, "_cpuinfo", lambda: info)
    assert machine.cpu_model() == "Some Xeon"
    features = machine.cpu_features()
    assert features.startswith("avx2 avx512f avx512_bf16 amx_bf16 amx_tile; torch ")  # SPEED_FLAGS' order
    assert "sse" not in features and machine.gpu_name(torch.device("cpu")) == ""
