"""DualCrossAttention (docs/architecture.md 3.2; the patent's DCA, after Ates et al. 2023, arXiv 2303.17696).

Feature map F [B,C,H,W] and text [B,L,D] in; F plus the dual attention's update out. The two
attention cores are the custom ops `channel_cross_attention` and `spatial_cross_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dbunet.models import ops
from dbunet.models.layers import Attention


class DSConv(nn.Module):
    """Depthwise-separable conv on the token grid: 3x3 depthwise, then 1x1 pointwise."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        B, P, C = tokens.shape
        x = tokens.transpose(1, 2).reshape(B, C, grid[0], grid[1])  # (B, C, Hp, Wp)
        x = self.pointwise(self.depthwise(x))
        return x.flatten(2).transpose(1, 2)  # (B, P, C_out)


class DualCrossAttention(nn.Module):
    def __init__(self, channels: int, text_dim: int, heads: int, pool: int) -> None:
        super().__init__()
        C, Cc = channels, 2 * channels
        self.pool = pool
        self.heads = heads
        # step 2: text aligned to the tokens by a standard cross-attention
        self.text_proj = nn.Linear(text_dim, C)
        self.text_attn = Attention(C, heads, context_dim=C)
        # LN(F_tok), used in T_c and as the CCA query
        self.norm_tokens = nn.LayerNorm(C)
        # step 4: channel cross-attention
        self.cca_q, self.cca_k, self.cca_v = DSConv(C, C), DSConv(Cc, Cc), DSConv(Cc, Cc)
        self.cca_out = DSConv(C, C)
        # step 5: spatial cross-attention
        self.norm_concat = nn.LayerNorm(Cc)
        self.norm_values = nn.LayerNorm(C)
        self.sca_q, self.sca_k, self.sca_v = DSConv(Cc, Cc), DSConv(Cc, Cc), DSConv(C, C)
        self.sca_out = nn.Linear(C, C)
        # step 6: back onto the map
        self.proj_out = nn.Conv2d(C, C, 1)

    def forward(self, f: Tensor, text: Tensor) -> Tensor:
        B, C, H, W = f.shape
        # 1. tokens: average-pool by k (ceil: a ragged edge cell averages what it covers)
        grid_map = f if self.pool == 1 else F.avg_pool2d(f, self.pool, ceil_mode=True)  # (B, C, Hp, Wp)
        grid = (grid_map.shape[2], grid_map.shape[3])
        tokens = grid_map.flatten(2).transpose(1, 2)  # (B, P, C)

        # 2. T_txt: queries from the tokens, keys/values from the text projected to C channels
        normed = self.norm_tokens(tokens)
        t_txt = self.text_attn(normed, self.text_proj(text))  # (B, P, C)

        # 3./4. T_c = [LN(F_tok); T_txt] (B, P, 2C); channel attention; residual
        t_c = torch.cat([normed, t_txt], dim=-1)
        cca = ops.channel_cross_attention(
            self.cca_q(normed, grid), self.cca_k(t_c, grid), self.cca_v(t_c, grid)
        )  # (B, P, C)
        tokens = tokens + self.cca_out(cca, grid)

        # 5. spatial attention over tokens with T_c' rebuilt from the updated tokens; residual
        normed = self.norm_tokens(tokens)
        t_c = self.norm_concat(torch.cat([normed, t_txt], dim=-1))  # (B, P, 2C)
        sca = ops.spatial_cross_attention(
            self.sca_q(t_c, grid), self.sca_k(t_c, grid), self.sca_v(self.norm_values(tokens), grid), self.heads
        )  # (B, P, C)
        tokens = tokens + self.sca_out(sca)

        # 6. back to the map: upsample by k (cropping a ragged edge), 1x1 conv, residual onto F
        out = tokens.transpose(1, 2).reshape(B, C, grid[0], grid[1])  # (B, C, Hp, Wp)
        if self.pool > 1:
            out = F.interpolate(out, scale_factor=float(self.pool), mode="nearest")[:, :, :H, :W]
        return f + self.proj_out(out)
