"""VMamba "v0" (Vanilla-VMamba) layers as VM-UNet and VM-UNetV2 use them.

Written for segbench from the facts in ``reference-facts.md`` section 1.1-1.2; the attribute
names equal the official ones (``patch_embed``, ``layers.i.blocks.j.ln_1``,
``self_attention.x_proj_weight`` ...) so that the official checkpoints and VMamba's ImageNet
checkpoint load by name. Tensors between blocks are channels-last (B, H, W, C), as upstream.

v0 is not the current VMamba: 4 scan directions with separate projections per direction,
d_state 16, expand 2, dt_rank ceil(C/16), no MLP, linear patch merging, LayerNorm eps 1e-5.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, trunc_normal_
from torch import nn

from segbench.nn.selective_scan import selective_scan_fn

SCAN_DIRECTIONS = 4
# What mixes the tokens inside SS2D: the 4-direction selective scan, or nothing (the no-scan control:
# the scan's output is replaced by its input, so a block keeps in_proj, the 3x3 depthwise conv, SiLU,
# out_norm, the SiLU(z) gate and out_proj; close to the Gated CNN block that MambaOut, Yu & Wang 2024,
# obtains by removing the SSM from a Mamba block).
MIXERS = ("ss2d", "none")


class PatchEmbed2D(nn.Module):
    """Non-overlapping patch_size x patch_size conv, then LayerNorm; returns (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """2x2 neighbourhood -> channels (4C) -> LayerNorm -> Linear to 2C.

    The neighbours are concatenated as (row, col) offsets (0,0), (1,0), (0,1), (1,1): the order
    VMamba v0 (and so the ImageNet checkpoint) uses, which is not Swin's.
    An odd height or width loses its last row/column, as upstream.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
        x = x[:, :height, :width]
        neighbours = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat(neighbours, dim=-1)))


def _channels_to_pixels(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, H, W, scale*scale*c) -> (B, H*scale, W*scale, c), channels read as (p1 p2 c)."""
    return rearrange(x, "b h w (p1 p2 c) -> b (h p1) (w p2) c", p1=scale, p2=scale)


class PatchExpand2D(nn.Module):
    """VM-UNet decoder upsampling: (B, H, W, 2*dim) -> Linear to 4*dim -> (B, 2H, 2W, dim) -> LN."""

    def __init__(self, dim: int):
        super().__init__()
        self.expand = nn.Linear(2 * dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_channels_to_pixels(self.expand(x), 2))


class FinalPatchExpand2D(nn.Module):
    """VM-UNet's last x4 step: (B, H, W, dim) -> Linear to 4*dim -> (B, 4H, 4W, dim/4) -> LN."""

    def __init__(self, dim: int, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim // scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_channels_to_pixels(self.expand(x), self.scale))


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def _cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, 4, D, L): row-major, column-major, and both reversed."""
    row_major = x.flatten(2)
    column_major = x.transpose(2, 3).flatten(2)
    forward = torch.stack([row_major, column_major], dim=1)
    return torch.cat([forward, forward.flip(-1)], dim=1)


def _cross_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of ``_cross_scan`` summed over directions: (B, 4, D, L) -> (B, D, L) row-major."""
    batch, _, dim, length = y.shape
    reversed_back = y[:, 2:4].flip(-1)

    def column_to_row_major(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, dim, width, height).transpose(2, 3).reshape(batch, dim, length)

    # summed in the official order: row, reversed row, column, reversed column
    return y[:, 0] + reversed_back[:, 0] + column_to_row_major(y[:, 1]) + column_to_row_major(reversed_back[:, 1])


class SS2D(nn.Module):
    """2D selective scan (VMamba v0): in_proj -> DWConv3x3 -> SiLU -> 4-direction scan -> LN -> gate -> out_proj.

    Each direction k has its own x_proj (``x_proj_weight[k]``), dt projection
    (``dt_projs_weight[k]``, ``dt_projs_bias[k]``), A (``A_logs`` rows k*D..(k+1)*D) and D skip
    (``Ds``). These are raw ``nn.Parameter``s, as upstream, which is why thop-style counts miss them.
    The scan runs in float32 (float64 for float64 inputs) with autocast off.

    ``mixer="none"`` builds none of those per-direction tensors and passes the activated conv output
    straight to ``out_norm``: the identity in place of cross-scan, selective scan and cross-merge.
    (The scan with its state path cut returns its D skip summed over the 4 directions, 4u at init;
    ``out_norm`` makes that factor irrelevant.)
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        scan_backend: str = "auto",
        mixer: str = "ss2d",
    ):
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"SS2D: mixer must be one of {MIXERS}, got {mixer!r}; fix the model's mixer argument")
        self.d_state = d_state
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        self.mixer = mixer
        if mixer == "ss2d":
            self._build_scan_parameters(d_state, dt_min, dt_max, dt_scale, dt_init_floor)

        inner = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=False)
        self.conv2d = nn.Conv2d(inner, inner, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=inner, bias=True)
        self.act = nn.SiLU()
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, d_model, bias=False)

    def _build_scan_parameters(self, d_state: int, dt_min: float, dt_max: float, dt_scale: float, dt_init_floor: float):
        k, inner, rank = SCAN_DIRECTIONS, self.d_inner, self.dt_rank

        # nn.Linear's default init (kaiming uniform, a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        x_proj_bound = 1.0 / math.sqrt(inner)
        self.x_proj_weight = nn.Parameter(torch.empty(k, rank + 2 * d_state, inner).uniform_(-x_proj_bound, x_proj_bound))
        dt_bound = rank**-0.5 * dt_scale
        self.dt_projs_weight = nn.Parameter(torch.empty(k, inner, rank).uniform_(-dt_bound, dt_bound))
        # bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max], floored: softplus(bias) starts in that range
        log_dt = torch.rand(k, inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.dt_projs_bias = nn.Parameter(_inverse_softplus(torch.exp(log_dt).clamp(min=dt_init_floor)))
        # S4D-real: A = -(1..d_state) for every channel; stored as log, kept out of weight decay
        a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(k * inner, 1)
        self.A_logs = nn.Parameter(a_log)
        self.A_logs._no_weight_decay = True
        self.Ds = nn.Parameter(torch.ones(k * inner))
        self.Ds._no_weight_decay = True

    def _scan_all_directions(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> (B, D, L) in the scan's compute dtype."""
        batch, _, height, width = x.shape
        length = height * width
        xs = _cross_scan(x)
        projected = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(projected, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)

        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = selective_scan_fn(
                xs.to(dtype).reshape(batch, -1, length),
                dts.to(dtype).reshape(batch, -1, length),
                -torch.exp(self.A_logs.to(dtype)),
                Bs.to(dtype).contiguous(),
                Cs.to(dtype).contiguous(),
                D=self.Ds.to(dtype),
                delta_bias=self.dt_projs_bias.to(dtype).reshape(-1),
                delta_softplus=True,
                backend=self.scan_backend,
            )
        return _cross_merge(y.view(batch, SCAN_DIRECTIONS, -1, length), height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        if self.mixer == "none":
            return self.out_proj(self.out_norm(x.permute(0, 2, 3, 1)) * F.silu(z))
        y = self._scan_all_directions(x).transpose(1, 2).reshape(batch, height, width, -1)
        if not torch.is_autocast_enabled(x.device.type):
            y = y.to(x.dtype)  # a half-precision model without autocast; under autocast the norm runs in fp32 as upstream
        return self.out_proj(self.out_norm(y) * F.silu(z))


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(LayerNorm(x))); v0 has no MLP."""

    def __init__(
        self, hidden_dim: int, drop_path: float = 0.0, d_state: int = 16, scan_backend: str = "auto", mixer: str = "ss2d"
    ):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = SS2D(hidden_dim, d_state=d_state, scan_backend=scan_backend, mixer=mixer)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


def _blocks(dim: int, drop_paths: Sequence[float], d_state: int, scan_backend: str, mixer: str = "ss2d") -> nn.ModuleList:
    return nn.ModuleList(VSSBlock(dim, rate, d_state, scan_backend, mixer) for rate in drop_paths)


class VSSLayer(nn.Module):
    """One encoder stage: VSS blocks, then (except in the last stage) patch merging."""

    def __init__(
        self,
        dim: int,
        drop_paths: Sequence[float],
        downsample: bool,
        d_state: int = 16,
        scan_backend: str = "auto",
        mixer: str = "ss2d",
    ):
        super().__init__()
        self.blocks = _blocks(dim, drop_paths, d_state, scan_backend, mixer)
        self.downsample = PatchMerging2D(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class VSSLayerUp(nn.Module):
    """One VM-UNet decoder stage: patch expanding first (except in the first stage), then VSS blocks."""

    def __init__(self, dim: int, drop_paths: Sequence[float], upsample: bool, d_state: int = 16, scan_backend: str = "auto"):
        super().__init__()
        self.blocks = _blocks(dim, drop_paths, d_state, scan_backend)
        self.upsample = PatchExpand2D(dim) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        for block in self.blocks:
            x = block(x)
        return x


def _drop_path_rates(depths: Sequence[int], rate: float) -> list[float]:
    return [value.item() for value in torch.linspace(0, rate, sum(depths), device="cpu")]


def _split_by_stage(values: list[float], depths: Sequence[int]) -> list[list[float]]:
    bounds = [sum(depths[:i]) for i in range(len(depths) + 1)]
    return [values[bounds[i] : bounds[i + 1]] for i in range(len(depths))]


def stage_dims(embed_dim: int, num_stages: int = 4) -> list[int]:
    return [embed_dim * 2**i for i in range(num_stages)]


class VSSMEncoder(nn.Module):
    """VMamba v0 encoder (``VSSM`` with VM-UNetV2's decoder-less forward).

    ``forward`` returns the **inputs** of the stages, channels-last: the patch embedding and the
    outputs of stages 0..2. The last stage runs and its output is discarded, as upstream: its
    parameters count and cost time but never receive a gradient.
    """

    def __init__(
        self,
        in_chans: int = 3,
        depths: Sequence[int] = (2, 2, 9, 2),
        embed_dim: int = 96,
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        scan_backend: str = "auto",
        mixer: str = "ss2d",
    ):
        super().__init__()
        self.dims = stage_dims(embed_dim, len(depths))
        self.patch_embed = PatchEmbed2D(patch_size, in_chans, embed_dim)
        rates = _split_by_stage(_drop_path_rates(depths, drop_path_rate), depths)
        self.layers = nn.ModuleList(
            VSSLayer(dim, stage_rates, i < len(depths) - 1, d_state, scan_backend, mixer)
            for i, (dim, stage_rates) in enumerate(zip(self.dims, rates))
        )
        self.apply(_vssm_init)

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return (output of the last stage, inputs of every stage)."""
        x = self.patch_embed(x)
        stage_inputs = []
        for layer in self.layers:
            stage_inputs.append(x)
            x = layer(x)
        return x, stage_inputs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        _, stage_inputs = self.forward_stages(x)
        return stage_inputs


class VSSMUNet(VSSMEncoder):
    """VM-UNet's ``VSSM``: the encoder above plus the VSS decoder and the x4 patch-expanding head.

    The decoder adds the encoder stage inputs 3, 2, 1 (not the patch embedding) to its stage
    inputs *before* each patch expansion, and returns logits (B, num_classes, H, W).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1,
        depths: Sequence[int] = (2, 2, 9, 2),
        depths_decoder: Sequence[int] = (2, 9, 2, 2),
        embed_dim: int = 96,
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        scan_backend: str = "auto",
    ):
        super().__init__(in_chans, depths, embed_dim, d_state, drop_path_rate, patch_size, scan_backend)
        dims_decoder = self.dims[::-1]
        rates = _split_by_stage(_drop_path_rates(depths_decoder, drop_path_rate)[::-1], depths_decoder)
        self.layers_up = nn.ModuleList(
            VSSLayerUp(dim, stage_rates, upsample=i > 0, d_state=d_state, scan_backend=scan_backend)
            for i, (dim, stage_rates) in enumerate(zip(dims_decoder, rates))
        )
        self.final_up = FinalPatchExpand2D(dims_decoder[-1], scale=patch_size)
        self.final_conv = nn.Conv2d(dims_decoder[-1] // patch_size, num_classes, 1)
        self.layers_up.apply(_vssm_init)
        self.final_up.apply(_vssm_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, stage_inputs = self.forward_stages(x)
        for index, layer_up in enumerate(self.layers_up):
            x = layer_up(x if index == 0 else x + stage_inputs[-index])
        return self.final_conv(self.final_up(x).permute(0, 3, 1, 2))


def _vssm_init(module: nn.Module) -> None:
    """VSSM's init: Linear weights trunc_normal(0.02) and zero bias, LayerNorm (1, 0); convs and
    the raw SS2D parameters keep their own init."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
