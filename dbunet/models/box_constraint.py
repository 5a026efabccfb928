"""BoxConstraint (docs/architecture.md 3.2, our design after GLIGEN): each pixel attends to the grounding tokens of
the boxes that cover it, plus a null token it always sees; a gated residual adds the result."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dbunet.models import ops


def fourier_features(boxes: Tensor, num_freqs: int, temperature: float = 100.0) -> Tensor:
    """[B,N,4] -> [B,N,4*2*num_freqs]: sin and cos of each coordinate at geometric frequencies."""
    freqs = temperature ** (torch.arange(num_freqs, dtype=boxes.dtype, device=boxes.device) / num_freqs)
    args = boxes[..., None] * freqs  # (B, N, 4, F)
    feats = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (B, N, 4, 2F)
    # explicit last dim: a reshape to -1 is undefined in ONNX when N = 0
    return feats.reshape(boxes.shape[0], boxes.shape[1], 8 * num_freqs)  # (B, N, 8F)


class BoxConstraint(nn.Module):
    def __init__(self, channels: int, text_dim: int, hidden: int, num_freqs: int, gate_init: float) -> None:
        super().__init__()
        C = channels
        self.num_freqs = num_freqs
        # 1. grounding tokens g_n = MLP([phrase_n ; Fourier(box_n)])
        self.grounding = nn.Sequential(
            nn.Linear(text_dim + 8 * num_freqs, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, C),
        )
        self.padding_token = nn.Parameter(torch.randn(C) / math.sqrt(C))  # stands in for empty slots
        self.null_token = nn.Parameter(torch.randn(C) / math.sqrt(C))  # always visible
        # 3. single-head masked attention, pixels -> tokens
        self.norm = nn.LayerNorm(C)
        self.to_q = nn.Linear(C, C, bias=False)
        self.to_k = nn.Linear(C, C, bias=False)
        self.to_v = nn.Linear(C, C)
        self.proj = nn.Linear(C, C)
        # 4. gate: tanh(gamma) * box_scale
        self.gamma = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, x: Tensor, boxes: Tensor, phrases: Tensor, valid: Tensor, box_scale: Tensor) -> Tensor:
        B, C, H, W = x.shape
        boxes = boxes.to(x.dtype)
        g = self.grounding(torch.cat([phrases.to(x.dtype), fourier_features(boxes.clamp(0, 1), self.num_freqs)], -1))
        g = torch.where(valid[..., None] > 0, g, self.padding_token.to(x.dtype))  # (B, N, C)
        tokens = torch.cat([self.null_token.to(x.dtype).expand(B, 1, C), g], dim=1)  # (B, N+1, C)
        q = self.to_q(self.norm(x.flatten(2).transpose(1, 2)))  # (B, P, C)
        k = self.to_k(tokens)  # (B, N+1, C)
        # proj is affine and softmax rows sum to 1, so proj(sum w v) = sum w proj(v): fold it into V
        v = self.proj(self.to_v(tokens))  # (B, N+1, C)
        gate = torch.tanh(self.gamma) * box_scale.reshape(()).to(x.dtype)
        return ops.box_constraint(x, q, k, v, boxes, valid.to(x.dtype), gate)
