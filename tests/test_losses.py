import torch

from napari_unet.losses import IGNORE, DiceCELoss


def _logits_for(target: torch.Tensor, classes: int, scale: float = 50.0) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(target.clamp(min=0), classes).permute(0, 3, 1, 2)
    return onehot.float() * scale


def test_perfect_prediction_has_near_zero_loss():
    target = torch.randint(0, 3, (2, 32, 32))
    loss = DiceCELoss()(_logits_for(target, 3), target)
    assert loss.item() < 1e-3


def test_wrong_prediction_has_high_loss():
    target = torch.randint(0, 2, (2, 32, 32))
    loss = DiceCELoss()(_logits_for(1 - target, 2), target)
    assert loss.item() > 5


def test_ignored_pixels_do_not_change_the_loss():
    target = torch.randint(0, 2, (1, 16, 16))
    target[:, :, :8] = IGNORE
    logits = _logits_for(target, 2)
    altered = logits.clone()
    altered[:, :, :, :8] = torch.randn(1, 2, 16, 8) * 10  # garbage where nothing is annotated

    loss_fn = DiceCELoss()

    assert loss_fn(logits, target).item() < 1e-3
    torch.testing.assert_close(loss_fn(altered, target), loss_fn(logits, target))


def test_ignored_pixels_are_not_counted_as_background():
    # half the image is ignored; the annotated half is all foreground, predicted right
    target = torch.full((1, 16, 16), IGNORE)
    target[:, :, 8:] = 1
    logits = _logits_for(target.clamp(min=1), 2)
    logits[:, :, :, :8] = 0  # an unsure prediction where nothing is annotated

    assert DiceCELoss()(logits, target).item() < 1e-3


def test_pixel_weights_scale_cross_entropy():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    logits = torch.zeros(1, 2, 8, 8)
    loss_fn = DiceCELoss(dice_weight=0, ce_weight=1)
    plain = loss_fn(logits, target)
    doubled = loss_fn(logits, target, torch.full((1, 8, 8), 2.0))
    torch.testing.assert_close(doubled, 2 * plain)
