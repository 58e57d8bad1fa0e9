"""Parameter and FLOP counts: thop's rules on a hand-countable network, and the paper's Table 3 numbers."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segbench.complexity import _by_module_and_operator, count_flops, count_parameters
from segbench.nn.vmamba import SCAN_DIRECTIONS
from segbench.registry import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machine is shared; one thread is faster than two fighting
    yield
    torch.set_num_threads(previous)


class _HoldsRawParameter(nn.Module):
    """Like SS2D: a parameter of its own (thop misses it) beside a Linear (thop counts it)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.proj = nn.Linear(4, 6)

    def forward(self, x):
        return self.proj(x * self.scale)


class _HandCounted(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.composite = _HoldsRawParameter()
        self.norm = nn.LayerNorm(6)
        self.discarded = nn.Linear(6, 3)
        self.deconv = nn.ConvTranspose2d(6, 2, 4, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.never_called = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        x = self.bn(self.conv(x))
        x = self.norm(self.composite(x.permute(0, 2, 3, 1)))
        self.discarded(x)  # runs, result unused: thop counts it, a jit trace would drop it
        y = F.interpolate(self.deconv(x.permute(0, 3, 1, 2)), scale_factor=2, mode="bilinear")
        return y + self.pool(y)


def test_thop_rules_on_a_hand_counted_network():
    model = _HandCounted()
    # input 1x3x8x8; per module: output elements x (in / groups) x kernel, or thop's norm/pool rule
    expected_macs = (
        4 * 64 * 3 * 9  # conv
        + 4 * (4 * 64)  # batch norm: 2 per element, x2 for the affine
        + 4 * (6 * 64)  # composite.proj: in_features x output elements
        + 4 * (6 * 64)  # layer norm
        + 6 * (3 * 64)  # discarded linear
        + (2 * 16 * 16) * 6 * 16  # transposed conv: output elements x in_channels x kernel area
        + (32 * 32 + 1) * 2  # adaptive avg pool to 1x1: (window + 1) per output element
    )  # F.interpolate and the additions are functional: not counted
    flops = count_flops(model, size=8)
    assert flops["macs_no_scan_g"] * 1e9 == pytest.approx(expected_macs, abs=0.5)

    counts = count_parameters(model, size=8)
    leaf_params = 112 + 8 + 30 + 12 + 21 + 194  # conv, bn, composite.proj, norm, discarded, deconv
    assert counts == {"total": leaf_params + 4 + 6, "paper": leaf_params}  # + raw scale, + never_called


class _FusedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)

    def forward(self, x):
        tokens = self.conv(x).flatten(2).transpose(1, 2)[:, None]  # (1, heads 1, 64 tokens, 3)
        return F.scaled_dot_product_attention(tokens, tokens, tokens)


def test_fused_attention_counts_as_its_two_matmuls_in_fvcore_flops():
    flops = count_flops(_FusedAttention(), size=8)
    conv = 64 * 3 * 3
    attention = 64 * 64 * 3 + 64 * 64 * 3  # q @ k^T, then attn @ v
    assert flops["flops_g"] * 1e9 == pytest.approx(conv + attention, abs=0.5)
    assert flops["macs_no_scan_g"] * 1e9 == pytest.approx(conv, abs=0.5)  # thop never saw the functional op


def test_counting_restores_training_mode():
    model = _HandCounted().train()
    count_flops(model, size=8)
    count_parameters(model, size=8)
    assert model.training and model.bn.training


@pytest.mark.slow
def test_unetv2_counts_match_the_official_model():
    model = create_model("unetv2")
    assert count_parameters(model) == {"total": 25_145_036, "paper": 25_128_652}  # deconv5 never runs
    flops = count_flops(model, 256)
    assert flops["macs_no_scan_g"] == pytest.approx(5.399307904, abs=1e-9)


@pytest.mark.slow
def test_vmunetv2_counts_match_the_paper():
    model = create_model("vmunetv2")
    assert count_parameters(model) == {"total": 22_770_934, "paper": 17_907_958}
    flops = count_flops(model, 256)
    assert round(flops["macs_no_scan_g"], 2) == 4.40
    assert flops["macs_no_scan_g"] == pytest.approx(4.400107808, abs=1e-9)
    assert flops["flops_g"] == pytest.approx(7.814514008, abs=1e-9)  # fvcore, scan as 9*B*L*D*N + B*D*L


@pytest.mark.slow
def test_vmunet_class_defaults_count_as_the_vmunetv2_paper_table():
    model = create_model("vmunet")
    assert count_parameters(model) == {"total": 44_273_833, "paper": 34_621_609}
    flops = count_flops(model, 256)
    assert round(flops["macs_no_scan_g"], 2) == 7.56
    assert flops["macs_no_scan_g"] == pytest.approx(7.562330112, abs=1e-9)


def _scan_flops(layer, length: int) -> int:
    """What an SS2D's scan adds in fvcore's count: the x_proj and dt_proj einsums and VMamba's
    9*L*D*N + L*D for the scan, D = 4 directions x d_inner."""
    inner, rank, state = layer.d_inner, layer.dt_rank, layer.d_state
    einsums = SCAN_DIRECTIONS * length * inner * (rank + 2 * state) + SCAN_DIRECTIONS * length * rank * inner
    channels = SCAN_DIRECTIONS * inner
    return einsums + 9 * length * channels * state + length * channels


def test_noscan_counts_are_vmunetv2s_without_the_scan():
    """Per VSS block of the used stages, the fvcore difference is the scan's own work; thop-style
    counts are equal (thop never saw the scan); the discarded last stage is dead code without the scan."""
    toy = {"embed_dim": 16, "mid_channel": 8, "depths": [1, 1, 1, 1]}
    torch.manual_seed(0)
    full, noscan = create_model("vmunetv2", **toy).eval(), create_model("vmunetv2_noscan", **toy).eval()
    inputs = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        full_counts, noscan_counts = _by_module_and_operator(full, inputs), _by_module_and_operator(noscan, inputs)
    for stage, side in enumerate((16, 8, 4)):
        name = f"vmunet.layers.{stage}.blocks.0.self_attention"
        layer = full.get_submodule(name)
        difference = full_counts[name]["fvcore"] - noscan_counts[name]["fvcore"]
        assert difference == pytest.approx(_scan_flops(layer, side * side), rel=1e-4)  # fvcore rounds einsums to 4 digits
        assert full_counts[name]["thop"] == noscan_counts[name]["thop"]
    assert noscan_counts["vmunet.layers.3"]["fvcore"] == 0 and full_counts["vmunet.layers.3"]["fvcore"] > 0
    assert count_flops(noscan, 64)["macs_no_scan_g"] == count_flops(full, 64)["macs_no_scan_g"]
    assert count_parameters(noscan, 64)["paper"] == count_parameters(full, 64)["paper"]


@pytest.mark.slow
def test_vmunetv2_noscan_counts():
    model = create_model("vmunetv2_noscan")
    assert count_parameters(model) == {"total": 17_944_822, "paper": 17_907_958}  # paper: as vmunetv2
    flops = count_flops(model, 256)
    assert flops["macs_no_scan_g"] == pytest.approx(4.400107808, abs=1e-9)  # as vmunetv2
    assert flops["flops_g"] == pytest.approx(3.805661056, abs=1e-9)
