"""The inference forward pass: its speed levers must not change the results."""

import copy
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from napari_unet import UNet
from napari_unet._inference import fused_unet_forward, make_forward
from napari_unet.model import fuse_batchnorm

from .conftest import TINY

CPU = torch.device("cpu")


@pytest.fixture
def network() -> UNet:
    """A tiny U-Net whose BatchNorm layers hold non-trivial statistics and affine terms."""
    torch.manual_seed(0)
    net = UNet(num_classes=3, **TINY)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    return net.eval()


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(0).random((3, 1, 64, 48), dtype=np.float32)


def plain(network: UNet, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(network(torch.from_numpy(batch)), dim=1).numpy()


def test_folded_batchnorm_computes_the_same_function(network, batch):
    fused = fuse_batchnorm(copy.deepcopy(network))
    forward = make_forward(network, CPU, None, softmax=True, fuse=True, channels_last=False)

    probabilities = forward(batch)

    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    np.testing.assert_allclose(probabilities, plain(network, batch), atol=1e-5)


def test_channels_last_matches_contiguous(network, batch):
    contiguous = make_forward(network, CPU, None, softmax=True, channels_last=False)
    channels_last = make_forward(network, CPU, None, softmax=True, channels_last=True)

    np.testing.assert_allclose(channels_last(batch), contiguous(batch), atol=1e-5)


def test_make_forward_leaves_the_network_unchanged(network, batch):
    before = {k: v.clone() for k, v in network.state_dict().items()}

    make_forward(network, CPU, torch.bfloat16, softmax=True)(batch)

    assert any(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    for key, value in network.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_logits_without_softmax(network, batch):
    forward = make_forward(network, CPU, None, softmax=False)

    logits = forward(batch)

    assert logits.shape == (3, 3, 64, 48)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(
        torch.softmax(torch.from_numpy(logits), 1).numpy(), plain(network, batch), atol=1e-5
    )


def test_bf16_agrees_with_fp32(network, batch):
    reference = plain(network, batch)
    forward = make_forward(network, CPU, torch.bfloat16, softmax=True)

    probabilities = forward(batch)

    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, reference, atol=0.05)
    confident = np.sort(reference, axis=1)[:, -1] - np.sort(reference, axis=1)[:, -2] > 0.05
    agreement = probabilities.argmax(1)[confident] == reference.argmax(1)[confident]
    assert agreement.mean() >= 0.999


@pytest.mark.slow
def test_compiled_forward_matches_and_pads_a_ragged_last_batch(network, batch):
    reference = make_forward(network, CPU, None, softmax=True)
    compiled = make_forward(network, CPU, None, softmax=True, compiled=True)

    full, ragged = compiled(batch), compiled(batch[:1])

    assert ragged.shape == (1, 3, 64, 48)
    np.testing.assert_allclose(full, reference(batch), atol=1e-4)
    np.testing.assert_allclose(ragged, reference(batch[:1]), atol=1e-4)


def test_bfloat16_weights_give_the_autocast_result(network, batch):
    forward = make_forward(network, CPU, torch.bfloat16, softmax=True)
    fused = fuse_batchnorm(copy.deepcopy(network)).to(memory_format=torch.channels_last)
    x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torch.softmax(fused(x).float(), dim=1).numpy()

    np.testing.assert_allclose(forward(batch), expected, atol=1e-6)
    assert network.encoders[0][0].weight.dtype == torch.float32  # the model is not changed


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_convolution_and_relu_fused_compute_the_same_function(network, batch, dtype):
    separate = make_forward(network, CPU, dtype, softmax=True, fuse_relu=False)
    fused = make_forward(network, CPU, dtype, softmax=True, fuse_relu=True)

    with torch.profiler.profile() as profile:
        probabilities = fused(batch)

    ops = {event.key for event in profile.key_averages()}
    assert "mkldnn::_convolution_pointwise" in ops  # the fused path ran
    np.testing.assert_allclose(probabilities, separate(batch), atol=1e-5)


def test_fused_forward_applies_only_where_conv_is_followed_by_relu(network):
    with_instance_norm = UNet(num_classes=2, **{**TINY, "norm": "instance"}).eval()
    unfolded = network.to(memory_format=torch.channels_last)

    assert fused_unet_forward(with_instance_norm) is None
    assert fused_unet_forward(fuse_batchnorm(copy.deepcopy(network))) is not None
    forward = fused_unet_forward(unfolded)  # BatchNorm between conv and ReLU
    assert forward is None


def test_fused_forward_keeps_the_networks_size_check(network):
    forward = fused_unet_forward(fuse_batchnorm(copy.deepcopy(network)))

    with torch.inference_mode(), pytest.raises(ValueError, match="divisible"):
        forward(torch.zeros(1, 1, 30, 32))


def test_allocator_setting_respects_the_users_environment(monkeypatch):
    from napari_unet._device import keep_freed_memory

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for key in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    assert keep_freed_memory() is sys.platform.startswith("linux")


def test_predict_reuses_its_forward_pass_until_the_weights_change(network):
    from napari_unet import prediction

    image = np.random.default_rng(1).random((40, 40), dtype=np.float32)
    prediction._LOCAL_FORWARDS.clear()
    first = prediction.predict(network, image, output="probabilities")
    built = next(iter(prediction._LOCAL_FORWARDS.values()))[2]

    again = prediction.predict(network, image, output="probabilities")
    assert next(iter(prediction._LOCAL_FORWARDS.values()))[2] is built  # reused
    np.testing.assert_array_equal(again, first)

    with torch.no_grad():  # an in-place update, as an optimiser step or a reload makes
        network.head.bias.add_(torch.tensor([5.0, 0.0, 0.0]))
    changed = prediction.predict(network, image, output="probabilities")
    assert next(iter(prediction._LOCAL_FORWARDS.values()))[2] is not built
    assert changed[0].mean() > first[0].mean() + 0.1  # the new weights are used


def test_two_class_labels_equal_the_argmax():
    from napari_unet.prediction import _labels_of

    values = np.random.default_rng(2).random((2, 70, 33), dtype=np.float32)
    values[1, :3] = values[0, :3]  # ties go to the first class, as argmax does
    class_values = np.array([0, 255])

    labels = _labels_of(values, class_values, np.uint8)

    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, class_values[values.argmax(0)])


def test_predict_drops_objects_below_the_learned_size_unless_told_otherwise(monkeypatch):
    from napari_unet import prediction
    from napari_unet.data import LabelEncoding, Normalization
    from napari_unet.model import SegmentationModel

    seen = []

    class Planned(Exception):
        pass

    def plan(model, image, config, channel_axis, min_size, *rest):
        seen.append(min_size)
        raise Planned

    monkeypatch.setattr(prediction, "_plan", plan)
    encoding = LabelEncoding("instances", ["background", "interior", "boundary"], [0, 1, 2],
                             [0, 1, 2], [])  # fmt: skip
    model = SegmentationModel(
        UNet(num_classes=3, **TINY), encoding, Normalization(), min_object_size=37
    )
    image = np.zeros((32, 32), np.float32)
    for kwargs in ({}, {"min_size": 5}):
        with pytest.raises(Planned):
            prediction.predict(model, image, **kwargs)
    model.min_object_size = None  # a model saved before the size was recorded
    with pytest.raises(Planned):
        prediction.predict(model, image)

    assert seen == [37, 5, prediction.DEFAULT_MIN_SIZE]
    spec = prediction.ModelSpec.from_model(
        SegmentationModel(
            UNet(num_classes=3, **TINY), encoding, Normalization(), min_object_size=9
        )
    )
    assert spec.build().min_object_size == 9  # dask workers and cluster batches get it too


def test_prediction_caches_keep_the_most_recently_used_entries():
    from collections import OrderedDict

    from napari_unet import prediction

    cache = OrderedDict()
    prediction._remember(cache, "a", 1)
    prediction._remember(cache, "b", 2)
    assert prediction._recall(cache, "a") == 1  # "a" is now the most recent
    prediction._remember(cache, "c", 3)

    assert list(cache) == ["a", "c"]  # "b", least recently used, was dropped
    assert prediction._recall(cache, "b") is None


def test_a_short_last_axis_is_read_as_channels_not_as_a_stack():
    from napari_unet import predict
    from napari_unet.data import InputError

    torch.manual_seed(0)
    network = UNet(1, 2, depth=2, base_channels=4)
    image = np.random.default_rng(0).random((48, 40)).astype(np.float32)

    np.testing.assert_array_equal(predict(network, image[..., None]), predict(network, image))
    with pytest.raises(InputError, match="expects 1 channel"):
        predict(network, np.stack([image, image], axis=-1))


def test_a_stack_given_to_an_rgb_model_is_described_as_a_stack():
    from napari_unet import predict
    from napari_unet.data import InputError

    network = UNet(3, 2, depth=2, base_channels=4)
    image = np.zeros((4, 48, 40), np.uint8)  # RGBA with the channels first, read as 4 planes

    with pytest.raises(InputError, match=r"stack of 4 planes \(4, 48, 40\).*channel_axis=0"):
        predict(network, image)
    assert predict(network, image, channel_axis=0).shape == (48, 40)
