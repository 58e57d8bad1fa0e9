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
