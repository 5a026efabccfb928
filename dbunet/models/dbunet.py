"""DB-UNet (docs/architecture.md 3.2; patent steps 4-6): the denoiser with dual cross-attention and box constraint.

    conv_in -> 3 ResCrossAttentionDownBlocks (ResNet, self-attention, DCA(text), Box) -> middle
    (ResNet, self+cross attention, ResNet, Box) -> 3 up blocks with skips (ResNet, self+cross
    attention) -> GroupNorm, SiLU, conv_out.

Inputs: sample [B,4,h,w], timestep [B], text [B,L,D], boxes [B,N,4], box phrases [B,N,D],
box validity [B,N], box_scale []. Output: predicted noise [B,4,h,w]. Any h, w (odd too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dbunet.config import DBUNetConfig
from dbunet.models.box_constraint import BoxConstraint
from dbunet.models.dual_cross_attention import DualCrossAttention
from dbunet.models.layers import (
    Downsample2D,
    ResnetBlock2D,
    TimestepEmbedding,
    Transformer2DModel,
    Upsample2D,
    timestep_embedding,
)


class BoxInputs:
    """The box tensors every BoxConstraint of one forward pass shares."""

    def __init__(self, boxes: Tensor, phrases: Tensor, valid: Tensor, scale: Tensor) -> None:
        self.boxes, self.phrases, self.valid, self.scale = boxes, phrases, valid, scale

    def apply(self, box: BoxConstraint, h: Tensor) -> Tensor:
        return box(h, self.boxes, self.phrases, self.valid, self.scale)


class ResCrossAttentionDownBlock(nn.Module):
    """Patent step 4: per layer ResNet(+temb) -> self-attention -> DCA(text) -> Box; then downsample."""

    def __init__(self, cfg: DBUNetConfig, in_ch: int, out_ch: int, temb_dim: int, level: int, down: bool) -> None:
        super().__init__()
        n, g = cfg.layers_per_block, cfg.norm_num_groups
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, temb_dim, g) for i in range(n)]
        )
        self.attentions = nn.ModuleList(
            [Transformer2DModel(out_ch, cfg.num_attention_heads, g, context_dim=None) for _ in range(n)]
        )
        self.dcas = nn.ModuleList(
            [DualCrossAttention(out_ch, cfg.cross_attention_dim, cfg.dca_heads, cfg.dca_pool(level)) for _ in range(n)]
        )
        self.boxes = nn.ModuleList(
            [
                BoxConstraint(out_ch, cfg.cross_attention_dim, cfg.box_hidden_dim, cfg.box_fourier_freqs,
                              cfg.box_gate_init)
                for _ in range(n)
            ]
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch)]) if down else None

    def forward(self, h: Tensor, temb: Tensor, text: Tensor, box: BoxInputs) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for resnet, attn, dca, box_layer in zip(self.resnets, self.attentions, self.dcas, self.boxes, strict=True):
            h = resnet(h, temb)
            h = attn(h)
            h = dca(h, text)
            h = box.apply(box_layer, h)
            skips.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class MidBlock(nn.Module):
    """Patent step 5: ResNet -> self+cross attention -> ResNet, then BoxConstraint on the bottleneck."""

    def __init__(self, cfg: DBUNetConfig, ch: int, temb_dim: int) -> None:
        super().__init__()
        g = cfg.norm_num_groups
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, temb_dim, g), ResnetBlock2D(ch, ch, temb_dim, g)])
        self.attentions = nn.ModuleList([Transformer2DModel(ch, cfg.num_attention_heads, g, cfg.cross_attention_dim)])
        self.box = BoxConstraint(ch, cfg.cross_attention_dim, cfg.box_hidden_dim, cfg.box_fourier_freqs,
                                 cfg.box_gate_init)

    def forward(self, h: Tensor, temb: Tensor, text: Tensor, box: BoxInputs) -> Tensor:
        h = self.resnets[0](h, temb)
        h = self.attentions[0](h, text)
        h = self.resnets[1](h, temb)
        return box.apply(self.box, h)


class UpBlock(nn.Module):
    """Patent step 6: per layer ResNet(concat skip) -> self+cross attention; then upsample."""

    def __init__(self, cfg: DBUNetConfig, in_chs: list[int], out_ch: int, temb_dim: int, up: bool) -> None:
        super().__init__()
        g = cfg.norm_num_groups
        self.resnets = nn.ModuleList([ResnetBlock2D(c, out_ch, temb_dim, g) for c in in_chs])
        self.attentions = nn.ModuleList(
            [Transformer2DModel(out_ch, cfg.num_attention_heads, g, cfg.cross_attention_dim) for _ in in_chs]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if up else None

    def forward(self, h: Tensor, skips: list[Tensor], temb: Tensor, text: Tensor, next_size) -> Tensor:
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            h = resnet(torch.cat([h, skips.pop()], dim=1), temb)
            h = attn(h, text)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, next_size)
        return h


class DBUNet(nn.Module):
    def __init__(self, cfg: DBUNetConfig) -> None:
        super().__init__()
        self.config = cfg
        chs = cfg.block_out_channels
        temb_dim = 4 * chs[0]
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chs[0], temb_dim)

        skip_chs = [chs[0]]
        self.down_blocks = nn.ModuleList()
        for level, out_ch in enumerate(chs):
            in_ch = chs[max(level - 1, 0)]
            down = level < len(chs) - 1
            self.down_blocks.append(ResCrossAttentionDownBlock(cfg, in_ch, out_ch, temb_dim, level, down))
            skip_chs += [out_ch] * (cfg.layers_per_block + int(down))

        self.mid_block = MidBlock(cfg, chs[-1], temb_dim)

        self.up_blocks = nn.ModuleList()
        prev = chs[-1]
        for i, out_ch in enumerate(reversed(chs)):
            in_chs = []
            for j in range(cfg.layers_per_block + 1):
                in_chs.append((prev if j == 0 else out_ch) + skip_chs.pop())
            self.up_blocks.append(UpBlock(cfg, in_chs, out_ch, temb_dim, up=i < len(chs) - 1))
            prev = out_ch

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, chs[0], eps=1e-5)
        self.conv_out = nn.Conv2d(chs[0], cfg.in_channels, 3, padding=1)

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        boxes: Tensor,
        box_phrases: Tensor,
        box_valid: Tensor,
        box_scale: Tensor,
    ) -> Tensor:
        emb = timestep_embedding(timestep.expand(sample.shape[0]), self.config.block_out_channels[0])  # fp32 always
        if emb.dtype != sample.dtype:  # an FP16 module on the GPU (traced FP32 graphs get no extra Cast)
            emb = emb.to(sample.dtype)
        temb = self.time_embedding(emb)
        text = encoder_hidden_states
        box = BoxInputs(boxes, box_phrases, box_valid, box_scale)

        h = self.conv_in(sample)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb, text, box)
            skips += block_skips

        h = self.mid_block(h, temb, text, box)

        for block in self.up_blocks:
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            next_size = skips[-1].shape[-2:] if skips else None
            h = block(h, block_skips, temb, text, next_size)

        return self.conv_out(F.silu(self.conv_norm_out(h)))
