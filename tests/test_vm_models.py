"""VM-UNetV2, VM-UNet and UNetV2: official state dicts, official forward quirks, and the VMamba v0 layers;
the no-scan control of VM-UNetV2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segbench.nn.sdi import SDI
from segbench.nn.vmamba import SS2D, PatchExpand2D, PatchMerging2D, VSSMEncoder
from segbench.registry import create_model, get_card

REFERENCE = Path(__file__).resolve().parent / "reference"
TINY_V2 = {"embed_dim": 16, "mid_channel": 8, "depths": [1, 1, 1, 1]}


def _reference_entries(filename: str) -> list[tuple[str, list[int]]]:
    return [(entry["key"], entry["shape"]) for entry in json.loads((REFERENCE / filename).read_text())["state_dict"]]


@pytest.mark.parametrize(
    ("name", "kwargs", "filename"),
    [
        ("vmunetv2", {}, "vmunetv2_state_dict.json"),
        ("vmunetv2", {"depths": [2, 2, 9, 2], "depths_decoder": [2, 2, 2, 1], "deep_supervision": True}, "vmunetv2_state_dict.json"),
        ("vmunet", {}, "vmunet_classdefault_state_dict.json"),
        ("vmunet", {"depths": [2, 2, 2, 2], "depths_decoder": [2, 2, 2, 1]}, "vmunet_state_dict.json"),
    ],
)
def test_state_dict_equals_the_official_dump(name, kwargs, filename):
    with torch.device("meta"):  # shapes only: no memory, no init
        model = create_model(name, **kwargs)
    got = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    assert got == _reference_entries(filename)


def test_unetv2_has_the_official_parameter_count():
    with torch.device("meta"):
        model = create_model("unetv2")
    assert sum(p.numel() for p in model.parameters()) == 25_145_036
    assert sum(p.numel() for p in model.encoder.parameters()) == 24_849_856


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _tiny(name: str, **overrides):
    torch.manual_seed(0)
    return create_model(name, **{**get_card(name).test_kwargs, **overrides})


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_vmunetv2_returns_one_probability_map(deep_supervision):
    model = _tiny("vmunetv2", deep_supervision=deep_supervision)
    out = model(torch.rand(2, 3, 64, 64) * 255)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 64, 64)
    assert 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize(("deep_supervision", "expected"), [(True, 5.0 + 3.0), (False, 5.0)])
def test_unetv2_returns_one_logit_map_p1_plus_upsampled_p2(deep_supervision, expected):
    model = _tiny("unetv2", deep_supervision=deep_supervision).eval()  # eval: the one map that is scored
    with torch.no_grad():
        for head, bias in ((model.seg_outs[3], 5.0), (model.seg_outs[2], 3.0)):
            head.weight.zero_()
            head.bias.fill_(bias)
        out = model(torch.rand(2, 3, 64, 64) * 255)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 64, 64)
    torch.testing.assert_close(out, torch.full_like(out, expected))


def test_vmunet_returns_probabilities():
    out = _tiny("vmunet")(torch.rand(2, 3, 64, 64) * 255)
    assert out.shape == (2, 1, 64, 64) and 0 <= out.min() and out.max() <= 1


def _params_without_gradient(model, loss_of_output) -> set[str]:
    loss_of_output(model(torch.rand(2, 3, 64, 64) * 255)).backward()
    return {name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()}


def test_vmunetv2_quirks_last_stage_deconv5_and_early_heads_get_no_gradient():
    model = _tiny("vmunetv2", deep_supervision=True)
    no_grad = _params_without_gradient(model, lambda out: out.mean())
    stage3 = {name for name, _ in model.named_parameters() if name.startswith("vmunet.layers.3.")}
    assert stage3 and stage3 <= no_grad
    assert {"deconv5.weight", "seg_outs.0.weight", "seg_outs.1.weight"} <= no_grad
    assert "deconv6.weight" not in no_grad and "seg_outs.2.weight" not in no_grad
    assert not any(name.startswith("vmunet.layers.2.") for name in no_grad)


def test_vmunetv2_without_deep_supervision_uses_only_the_finest_head():
    model = _tiny("vmunetv2", deep_supervision=False)
    no_grad = _params_without_gradient(model, lambda out: out.mean())
    assert {"deconv6.weight", "deconv6.bias", "seg_outs.2.weight"} <= no_grad
    assert "seg_outs.3.weight" not in no_grad


def test_vmunetv2_deep_supervision_fuses_head3_with_deconv6_of_head2():
    model = _tiny("vmunetv2", deep_supervision=True).eval()
    with torch.no_grad():
        model.deconv6.weight.zero_()
        model.deconv6.bias.fill_(0.7)
        x = torch.rand(1, 3, 64, 64) * 255
        model.deep_supervision = False
        finest = torch.logit(model(x).double())
        model.deep_supervision = True
        fused = torch.logit(model(x).double())
    torch.testing.assert_close(fused, finest + 0.7, rtol=0, atol=1e-4)


def test_vmunetv2_taps_are_stage_inputs():
    encoder = VSSMEncoder(depths=[1, 1, 1, 1], embed_dim=16).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        taps = encoder(x)
        assert torch.equal(taps[0], encoder.patch_embed(x))
        assert torch.equal(taps[1], encoder.layers[0](taps[0]))
        assert torch.equal(taps[3], encoder.layers[2](taps[2]))
    assert [t.shape for t in taps] == [(1, 16, 16, 16), (1, 8, 8, 32), (1, 4, 4, 64), (1, 2, 2, 128)]


@pytest.mark.parametrize("name", ["vmunetv2", "vmunetv2_noscan", "vmunet", "unetv2"])
def test_one_channel_input_is_repeated(name):
    model = _tiny(name).eval()
    gray = torch.rand(1, 1, 64, 64) * 255
    with torch.no_grad():
        torch.testing.assert_close(model(gray), model(gray.repeat(1, 3, 1, 1)), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["vmunetv2", "vmunetv2_noscan", "vmunet"])
def test_float64_forward_is_deterministic(name):
    model = _tiny(name).double().eval()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64) * 255
    with torch.no_grad():
        first, second = model(x), model(x)
    assert first.dtype == torch.float64 and torch.equal(first, second)


def test_ss2d_scans_in_float32_under_autocast():
    layer = SS2D(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scanned = layer._scan_all_directions(torch.rand(1, 32, 4, 4))
    assert scanned.dtype == torch.float32


@pytest.mark.parametrize("name", ["vmunetv2", "vmunetv2_noscan", "vmunet"])
def test_bfloat16_runs_with_and_without_autocast(name):
    model = _tiny(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(1, 3, 64, 64) * 255)
    out.float().mean().backward()
    assert torch.isfinite(out.float()).all()
    half = model.to(torch.bfloat16)(torch.rand(1, 3, 64, 64, dtype=torch.bfloat16) * 255)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half.float()).all()


def _direct_ss2d(layer: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D written the long way: each direction visits the pixels in an explicit order, runs its
    own recurrence with its own parameters, and writes back to the pixels it came from."""
    batch, height, width, _ = x.shape
    d, n, rank = layer.d_inner, layer.d_state, layer.dt_rank
    inner, z = (x @ layer.in_proj.weight.T).chunk(2, dim=-1)
    inner = F.silu(F.conv2d(inner.permute(0, 3, 1, 2), layer.conv2d.weight, layer.conv2d.bias, padding=1, groups=d))
    row_major = [(h, w) for h in range(height) for w in range(width)]
    column_major = [(h, w) for w in range(width) for h in range(height)]
    orders = [row_major, column_major, row_major[::-1], column_major[::-1]]
    merged = torch.zeros(batch, d, height, width, dtype=x.dtype)
    for k, order in enumerate(orders):
        u = torch.stack([inner[:, :, h, w] for h, w in order], dim=-1)
        projected = torch.einsum("bdl,cd->bcl", u, layer.x_proj_weight[k])
        dt, B, C = projected[:, :rank], projected[:, rank : rank + n], projected[:, rank + n :]
        delta = F.softplus(torch.einsum("brl,dr->bdl", dt, layer.dt_projs_weight[k]) + layer.dt_projs_bias[k][:, None])
        A = -torch.exp(layer.A_logs[k * d : (k + 1) * d])
        D = layer.Ds[k * d : (k + 1) * d]
        state = torch.zeros(batch, d, n, dtype=x.dtype)
        for step, (h, w) in enumerate(order):
            state = torch.exp(delta[:, :, step, None] * A) * state + (delta[:, :, step] * u[:, :, step])[:, :, None] * B[:, None, :, step]
            merged[:, :, h, w] += (state * C[:, None, :, step]).sum(-1) + D * u[:, :, step]
    y = F.layer_norm(merged.permute(0, 2, 3, 1), (d,), layer.out_norm.weight, layer.out_norm.bias)
    return (y * F.silu(z)) @ layer.out_proj.weight.T


def test_ss2d_matches_a_direct_four_direction_scan_in_float64():
    torch.manual_seed(1)
    layer = SS2D(16).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64)  # H != W catches transposition mistakes
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _direct_ss2d(layer, x), rtol=1e-10, atol=1e-10)


def test_ss2d_parameters_and_init_follow_vmamba_v0():
    layer = SS2D(96)
    assert layer.dt_rank == 6 and layer.d_inner == 192
    assert layer.x_proj_weight.shape == (4, 6 + 32, 192)
    assert torch.equal(layer.A_logs[5], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    assert torch.equal(layer.Ds, torch.ones(4 * 192))
    dt = F.softplus(layer.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert layer.dt_projs_weight.abs().max() <= 6**-0.5


def test_encoder_linear_init_and_drop_path_schedule():
    model = create_model("vmunet", depths=[2, 2, 2, 2], depths_decoder=[2, 2, 2, 1], embed_dim=32)
    in_proj = model.vmunet.layers[0].blocks[0].self_attention.in_proj.weight
    assert abs(in_proj.std().item() - 0.02) < 0.002
    encoder_rates = [b.drop_path.drop_prob for layer in model.vmunet.layers for b in layer.blocks]
    decoder_rates = [b.drop_path.drop_prob for layer in model.vmunet.layers_up for b in layer.blocks]
    assert encoder_rates == pytest.approx([0.2 * i / 7 for i in range(8)])
    assert decoder_rates == pytest.approx([0.2 * i / 6 for i in range(7)][::-1])


def test_patch_merging_concatenates_in_vmamba_order():
    merging = PatchMerging2D(1)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 2, 1)  # (row, col): (0,0)=1 (0,1)=2 (1,0)=3 (1,1)=4
    seen = {}
    merging.norm.register_forward_hook(lambda module, args, output: seen.update(input=args[0]))
    merging(x)
    assert seen["input"].flatten().tolist() == [1.0, 3.0, 2.0, 4.0]


def test_patch_expand_reads_channels_as_p1_p2_c():
    expand = PatchExpand2D(1)
    with torch.no_grad():
        expand.expand.weight.copy_(torch.tensor([[1.0, 0], [0, 1.0], [2.0, 0], [0, 2.0]]))
    seen = {}
    expand.norm.register_forward_hook(lambda module, args, output: seen.update(input=args[0]))
    expand(torch.tensor([1.0, 10.0]).view(1, 1, 1, 2))
    # channels (1, 10, 2, 20) are (p1, p2) = (0,0), (0,1), (1,0), (1,1)
    assert seen["input"].view(2, 2).tolist() == [[1.0, 10.0], [2.0, 20.0]]


def test_sdi_pools_larger_and_interpolates_smaller_maps_align_corners():
    sdi = SDI(1)
    with torch.no_grad():
        for conv in sdi.convs:
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
            conv.bias.zero_()
    big, anchor, small = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 4, 4), torch.rand(1, 1, 2, 2)
    with torch.no_grad():
        out = sdi([big, anchor, small, anchor], anchor)
    expected = (
        F.avg_pool2d(big, 2) * anchor * F.interpolate(small, size=(4, 4), mode="bilinear", align_corners=True) * anchor
    )
    torch.testing.assert_close(out, expected)


def test_channel_attention_needs_sixteen_channels():
    with pytest.raises(ValueError, match="embed_dim >= 16"):
        create_model("vmunetv2", embed_dim=8, mid_channel=8, depths=[1, 1, 1, 1])


def test_deep_supervision_with_several_classes_is_refused():
    with pytest.raises(ValueError, match="num_classes=1"):
        create_model("vmunetv2", num_classes=2, **TINY_V2)


def test_toy_configurations_are_small():
    for name in ("vmunetv2", "vmunetv2_noscan", "vmunet", "unetv2"):
        model = _tiny(name)
        assert sum(p.numel() for p in model.parameters()) < 5_000_000, name  # VM-UNet's learnable toy: 4.1 M


SCAN_TENSORS = ("x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")


def test_noscan_state_dict_is_vmunetv2s_without_the_scan_tensors():
    with torch.device("meta"):
        full, noscan = create_model("vmunetv2"), create_model("vmunetv2_noscan")
    full_state, noscan_state = full.state_dict(), noscan.state_dict()
    removed = [key for key in full_state if key not in noscan_state]
    assert list(noscan_state) == [key for key in full_state if key in noscan_state]  # nothing added, order kept
    assert all(noscan_state[key].shape == full_state[key].shape for key in noscan_state)
    blocks = {key.rsplit(".", 1)[0] for key in removed}
    assert len(blocks) == 2 + 2 + 9 + 2 and all(block.endswith(".self_attention") for block in blocks)
    assert sorted(removed) == sorted(f"{block}.{name}" for block in blocks for name in SCAN_TENSORS)
    assert sum(p.numel() for p in full.parameters()) == 22_770_934
    assert sum(p.numel() for p in noscan.parameters()) == 17_944_822
    assert sum(full_state[key].numel() for key in removed) == 22_770_934 - 17_944_822


def _shared_weights(source: SS2D, target: SS2D) -> SS2D:
    missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == sorted(SCAN_TENSORS)
    return target


def test_noscan_ss2d_is_the_gated_conv_path_with_the_identity_for_the_scan():
    torch.manual_seed(2)
    layer = SS2D(16, mixer="none").double()
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64)
    inner, z = (x @ layer.in_proj.weight.T).chunk(2, dim=-1)
    inner = F.silu(F.conv2d(inner.permute(0, 3, 1, 2), layer.conv2d.weight, layer.conv2d.bias, padding=1, groups=32))
    y = F.layer_norm(inner.permute(0, 2, 3, 1), (32,), layer.out_norm.weight, layer.out_norm.bias)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), (y * F.silu(z)) @ layer.out_proj.weight.T, rtol=1e-12, atol=1e-12)


def test_noscan_equals_the_scan_with_its_state_path_cut():
    """With C = 0 the scan returns its D skip (D = 1): 4u over the 4 directions; out_norm removes the 4."""
    torch.manual_seed(3)
    scanning = SS2D(16).double()
    with torch.no_grad():
        scanning.x_proj_weight[:, -scanning.d_state:] = 0  # the C rows
    noscan = _shared_weights(scanning, SS2D(16, mixer="none").double())
    for layer in (scanning, noscan):
        layer.out_norm.eps = 0.0  # so that LayerNorm(4u) is exactly LayerNorm(u)
    x = torch.randn(1, 4, 6, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(noscan(x), scanning(x), rtol=1e-9, atol=1e-9)
        scanning.x_proj_weight.normal_()
        assert (noscan(x) - scanning(x)).abs().max() > 1e-2  # with the state path the outputs differ


def test_an_unknown_mixer_is_refused():
    with pytest.raises(ValueError, match=r"mixer must be one of \('ss2d', 'none'\), got 'conv'"):
        create_model("vmunetv2", mixer="conv", **TINY_V2)


def test_vmunetv2_noscan_card_matches_vmunetv2s():
    full, noscan = get_card("vmunetv2"), get_card("vmunetv2_noscan")
    for field in ("output", "train_output", "input_divisor", "needs_mamba_ssm", "pretrained", "test_kwargs"):
        assert getattr(noscan, field) == getattr(full, field), field
