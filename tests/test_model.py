import pytest
import torch

from napari_unet import UNet
from napari_unet.model import fuse_batchnorm


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("size", [(32, 32), (64, 96), (160, 32)])
def test_output_shape_over_depths_and_sizes(depth, size):
    divisor = 2**depth
    height, width = (max(s, divisor) // divisor * divisor for s in size)
    net = UNet(3, 4, depth=depth, base_channels=4).eval()

    out = net(torch.zeros(2, 3, height, width))

    assert out.shape == (2, 4, height, width)


def test_paper_network_has_31_million_parameters():
    net = UNet(1, 2, depth=4, base_channels=64, norm="none")

    count = sum(p.numel() for p in net.parameters())

    assert count == 31_030_658  # the original U-Net's 31.03 M (padded convs, 2 classes)


def test_depth_4_concatenates_four_skips_before_the_convs(monkeypatch):
    net = UNet(1, 2, depth=4, base_channels=4).eval()
    calls = []
    real_cat = torch.cat

    def counting_cat(tensors, dim=0):
        calls.append([t.shape[1] for t in tensors])
        return real_cat(tensors, dim=dim)

    monkeypatch.setattr(torch, "cat", counting_cat)
    net(torch.zeros(1, 1, 64, 64))

    # encoder features of each level (4, 8, 16, 32 channels) meet the upsampled ones
    assert sorted(calls) == [[4, 4], [8, 8], [16, 16], [32, 32]]


def test_decoder_upsamples_with_2x2_transposed_convolutions():
    net = UNet(1, 2, depth=3, base_channels=8)
    ups = [d.up for d in net.decoders]
    assert all(isinstance(u, torch.nn.ConvTranspose2d) for u in ups)
    assert all(u.kernel_size == (2, 2) and u.stride == (2, 2) for u in ups)
    assert [u.out_channels for u in ups] == [32, 16, 8]


def test_size_not_divisible_names_the_padded_size():
    net = UNet(1, 2, depth=4, base_channels=4)
    with pytest.raises(ValueError, match=r"\(112, 64\)"):
        net(torch.zeros(1, 1, 100, 50))


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_normalisation_options_train_and_run(norm):
    net = UNet(1, 2, depth=2, base_channels=8, norm=norm, dropout=0.1)
    out = net(torch.randn(2, 1, 32, 32))
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_fused_batchnorm_computes_the_same_function():
    torch.manual_seed(0)
    net = UNet(1, 3, depth=2, base_channels=8)
    net.train()
    for _ in range(3):  # give the running statistics non-trivial values
        net(torch.randn(4, 1, 32, 32) * 3 + 1)
    net.eval()
    x = torch.randn(2, 1, 32, 32)
    expected = net(x)

    fused = fuse_batchnorm(net)

    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    torch.testing.assert_close(fused(x), expected, atol=1e-4, rtol=1e-4)
