import pytest
import torch

from segbench.losses import BceDiceLoss


def test_logits_and_probabilities_give_the_same_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    from_logits = BceDiceLoss("logits")(logits, target)
    from_probabilities = BceDiceLoss("probabilities")(torch.sigmoid(logits), target)
    assert from_logits == pytest.approx(float(from_probabilities), rel=1e-5)


def test_perfect_prediction_has_near_zero_loss():
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1
    assert float(BceDiceLoss("probabilities")(target.clone(), target)) < 1e-5


def test_dice_term_is_per_sample_with_smooth_one():
    probabilities = torch.full((1, 1, 2, 2), 0.5)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    loss = BceDiceLoss("probabilities", bce_weight=0.0)(probabilities, target)
    assert float(loss) == pytest.approx(1 - (2 * 0.5 + 1) / (2.0 + 1.0 + 1))


def test_unknown_output_kind_is_rejected():
    with pytest.raises(ValueError, match="output_kind"):
        BceDiceLoss("softmax")


def test_bce_on_saturated_probabilities_equals_nn_bceloss():
    """The official code's nn.BCELoss clamps each log at -100 and leaves the probabilities alone: a
    confidently wrong pixel (probability sigmoid(16) for target 0) keeps a gradient of about 1."""
    probabilities = torch.tensor([[[[torch.sigmoid(torch.tensor(16.0)), 1.0], [0.0, 0.3]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    ours = BceDiceLoss("probabilities", bce_weight=1.0, dice_weight=0.0)(probabilities, target)
    reference = torch.nn.BCELoss()(probabilities, target)
    assert float(ours) == pytest.approx(float(reference), rel=1e-6)
    saturated = float(-torch.log(1 - probabilities[0, 0, 0, 0]))  # about 16 (float32 sigmoid(16))
    assert float(ours) == pytest.approx((saturated + 100.0 + 100.0 - float(torch.log(torch.tensor(0.3)))) / 4, rel=1e-5)
    ours.backward()
    assert float(probabilities.grad[0, 0, 0, 0]) * float(1 - probabilities[0, 0, 0, 0]) == pytest.approx(0.25, rel=1e-3)


def test_dice_uses_the_unclamped_probabilities():
    probabilities = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert float(BceDiceLoss("probabilities", bce_weight=0.0)(probabilities, target)) == 0.0
