"""DiffuseGAE refiner (docs/architecture.md 3.3; patent step 7, after Diff-AE and GAE).

    X1 -> SemanticEncoder -> z_sem -> GAE.encode -> 100-dim code (named attribute groups)
       -> GAE.decode -> z_dis -> ConditionalUNet (AdaGN) denoises X1 forward-noised to strength s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dbunet.config import RefinerConfig
from dbunet.models.layers import Downsample2D, ResnetBlock2D, TimestepEmbedding, Upsample2D, timestep_embedding


class SemanticEncoder(nn.Module):
    """Half-UNet conv encoder: image [B,3,H,W] in [-1,1] -> z_sem [B,semantic_dim]."""

    def __init__(self, cfg: RefinerConfig) -> None:
        super().__init__()
        chs, g = cfg.encoder_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(3, chs[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        prev = chs[0]
        for ch in chs:
            self.blocks.append(ResnetBlock2D(prev, ch, None, g))
            self.downsamplers.append(Downsample2D(ch))
            prev = ch
        self.norm_out = nn.GroupNorm(g, prev)
        self.proj_out = nn.Linear(prev, cfg.semantic_dim)

    def forward(self, image: Tensor) -> Tensor:
        h = self.conv_in(image)
        for block, down in zip(self.blocks, self.downsamplers, strict=True):
            h = down(block(h))
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))  # global pool: (B, C)
        return self.proj_out(h)


class MLPBlock(nn.Module):
    """Linear -> GroupNorm -> SiLU with a (projected) skip."""

    def __init__(self, in_dim: int, out_dim: int, groups: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.GroupNorm(groups, out_dim)
        self.skip = nn.Linear(in_dim, out_dim) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + F.silu(self.norm(self.linear(x)))


class BottleneckBlock(nn.Module):
    """Residual block through a 4x narrower hidden layer."""

    def __init__(self, dim: int, groups: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, dim // 4)
        self.norm = nn.GroupNorm(max(1, groups // 4), dim // 4)
        self.up = nn.Linear(dim // 4, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(F.silu(self.norm(self.down(x))))


class GAE(nn.Module):
    """Group-supervised autoencoder over z_sem: a code_dim code split into named attribute groups."""

    def __init__(self, cfg: RefinerConfig) -> None:
        super().__init__()
        widths, g = cfg.gae_widths, cfg.gae_groups
        dims = [cfg.semantic_dim, *widths]
        self.encoder = nn.Sequential(
            *[MLPBlock(a, b, g) for a, b in zip(dims[:-1], dims[1:], strict=True)],
            BottleneckBlock(widths[-1], g),
            BottleneckBlock(widths[-1], g),
            nn.Linear(widths[-1], cfg.code_dim),
        )
        rdims = dims[::-1]
        self.decoder = nn.Sequential(
            nn.Linear(cfg.code_dim, widths[-1]),
            BottleneckBlock(widths[-1], g),
            BottleneckBlock(widths[-1], g),
            *[MLPBlock(a, b, g) for a, b in zip(rdims[:-2], rdims[1:-1], strict=True)],
            nn.Linear(rdims[-2], cfg.semantic_dim),
        )

    def encode(self, z_sem: Tensor) -> Tensor:
        return self.encoder(z_sem)

    def decode(self, code: Tensor) -> Tensor:
        return self.decoder(code)

    def forward(self, z_sem: Tensor) -> Tensor:
        return self.decode(self.encode(z_sem))


def swap_attributes(code_a: Tensor, code_b: Tensor, groups: list[str], cfg: RefinerConfig) -> tuple[Tensor, Tensor]:
    """Exchange the named attribute groups between two codes (the patent's controllable editing)."""
    a, b = code_a.clone(), code_b.clone()
    for name in groups:
        s = cfg.attribute_slice(name)
        a[..., s], b[..., s] = code_b[..., s], code_a[..., s]
    return a, b


class AdaGNResBlock(nn.Module):
    """ResNet block with adaptive GroupNorm: h = GN(h)(1 + t_s) + t_b, then h = h(1 + z_s)."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, cond_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(temb_dim, 2 * out_ch)
        self.cond_proj = nn.Linear(cond_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor, z: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        t_s, t_b = self.time_proj(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
        z_s = self.cond_proj(z)[:, :, None, None]
        h = self.norm2(h) * (1 + t_s) + t_b
        h = h * (1 + z_s)
        return self.skip(x) + self.conv2(F.silu(h))


class ConditionalUNet(nn.Module):
    """Pixel-space noise predictor conditioned on z_dis: x_t [B,3,H,W], t [B], z_dis [B,S] -> eps."""

    def __init__(self, cfg: RefinerConfig) -> None:
        super().__init__()
        chs, g, zd = cfg.unet_channels, cfg.norm_num_groups, cfg.semantic_dim
        temb = 4 * chs[0]
        self.base_channels = chs[0]
        self.conv_in = nn.Conv2d(3, chs[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chs[0], temb)
        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        prev = chs[0]
        for i, ch in enumerate(chs):
            self.down.append(AdaGNResBlock(prev, ch, temb, zd, g))
            self.downsamplers.append(Downsample2D(ch) if i < len(chs) - 1 else nn.Identity())
            prev = ch
        self.mid = nn.ModuleList([AdaGNResBlock(prev, prev, temb, zd, g), AdaGNResBlock(prev, prev, temb, zd, g)])
        self.up = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i, ch in enumerate(reversed(chs)):
            self.up.append(AdaGNResBlock(prev + ch, ch, temb, zd, g))
            self.upsamplers.append(Upsample2D(ch) if i < len(chs) - 1 else nn.Identity())
            prev = ch
        self.norm_out = nn.GroupNorm(g, chs[0])
        self.conv_out = nn.Conv2d(chs[0], 3, 3, padding=1)

    def forward(self, sample: Tensor, timestep: Tensor, z_dis: Tensor) -> Tensor:
        temb = self.time_embedding(timestep_embedding(timestep.expand(sample.shape[0]), self.base_channels))
        h = self.conv_in(sample)
        skips = []
        for block, down in zip(self.down, self.downsamplers, strict=True):
            h = block(h, temb, z_dis)
            skips.append(h)
            h = down(h)
        for block in self.mid:
            h = block(h, temb, z_dis)
        for block, up in zip(self.up, self.upsamplers, strict=True):
            h = block(torch.cat([h, skips.pop()], dim=1), temb, z_dis)
            if skips:
                h = up(h, skips[-1].shape[-2:])
        return self.conv_out(F.silu(self.norm_out(h)))


class Refiner(nn.Module):
    def __init__(self, cfg: RefinerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.semantic_encoder = SemanticEncoder(cfg)
        self.gae = GAE(cfg)
        self.unet = ConditionalUNet(cfg)

    def condition(self, image: Tensor) -> Tensor:
        """X1 -> z_dis (the refiner's condition)."""
        return self.gae(self.semantic_encoder(image))
