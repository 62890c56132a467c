"""A small character transformer for classifying single words.

Written out with plain layers (Embedding, Linear, LayerNorm) rather than
`nn.TransformerEncoderLayer` / `nn.MultiheadAttention`: those take a different fast path in
eval mode and keep q/k/v in one fused `in_proj` tensor, while here every projection is its own
2-D weight that FUSED can adapt, and training and evaluation run the same arithmetic.
Dropout is absent, so a training run is a deterministic function of seed and data.

Each letter is embedded with two learned positions, counted from the word's start and from
its end: endings (-ung, -ment, -zione, -ción, -ness) say most about a word's language, and
in a left-aligned, padded sequence their distance from the start varies with the length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fused_wordlang.vocab import MAX_LEN, PAD, VOCAB_SIZE


@dataclass(frozen=True)
class WordConfig:
    vocab_size: int = VOCAB_SIZE
    max_len: int = MAX_LEN
    num_classes: int = 5
    d_model: int = 48
    n_heads: int = 4
    d_ff: int = 96
    n_layers: int = 2
    init_std: float = 0.02


class SelfAttention(nn.Module):
    def __init__(self, cfg: WordConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_heads != 0:
            raise ValueError(f"d_model {cfg.d_model} is not a multiple of n_heads {cfg.n_heads}")
        self.n_heads = cfg.n_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.k = nn.Linear(cfg.d_model, cfg.d_model)
        self.v = nn.Linear(cfg.d_model, cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D); pad: (B, T) True where the position is padding
        b, t, d = x.shape
        h = self.n_heads
        q = self.q(x).view(b, t, h, d // h).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k(x).view(b, t, h, d // h).transpose(1, 2)  # (B, H, T, Dh)
        v = self.v(x).view(b, t, h, d // h).transpose(1, 2)  # (B, H, T, Dh)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // h)  # (B, H, T, T)
        # a finite minimum, not -inf: an all-padding row gives a uniform softmax, never NaN
        scores = scores.masked_fill(pad[:, None, None, :], torch.finfo(scores.dtype).min)
        att = scores.softmax(dim=-1)  # (B, H, T, T)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        out: torch.Tensor = self.out(y)  # (B, T, D)
        return out


class FeedForward(nn.Module):
    def __init__(self, cfg: WordConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(F.gelu(self.fc(x)))  # (B, T, D)
        return out


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: WordConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = FeedForward(cfg)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), pad)  # (B, T, D)
        out: torch.Tensor = x + self.mlp(self.ln_2(x))  # (B, T, D)
        return out


class WordClassifier(nn.Module):
    """Token ids (B, T) int64 -> class logits (B, num_classes)."""

    def __init__(self, cfg: WordConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)  # position from the start
        self.end_emb = nn.Embedding(cfg.max_len, cfg.d_model)  # position from the word's end
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: (B, T) int64, T <= max_len, PAD after the word's last character
        _, t = tokens.shape
        if t > self.cfg.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len {self.cfg.max_len}")
        pad = tokens == PAD  # (B, T)
        pos = torch.arange(t, device=tokens.device)  # (T,)
        length = (~pad).sum(dim=1, keepdim=True)  # (B, 1)
        back = (length - 1 - pos).clamp(min=0)  # (B, T) 0 at the last letter (padding: 0 too)
        x = self.tok_emb(tokens) + self.pos_emb(pos) + self.end_emb(back)  # (B, T, D)
        for block in self.blocks:
            x = block(x, pad)  # (B, T, D)
        x = self.ln_f(x)  # (B, T, D)
        keep = (~pad).to(x.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)  # (B, D)
        logits: torch.Tensor = self.head(pooled)  # (B, num_classes)
        return logits


def is_adaptable(name: str) -> bool:
    """Whether FUSED may adapt parameter `name`: the 2-D weight matrices (embeddings, q/k/v/out,
    MLP and head weights). Sparse adapters add entries to a matrix, which is where a layer's
    capacity lies; biases and LayerNorm gains/shifts are small vectors that set scale and
    offset, so perturbing them moves every activation at once and they stay fixed."""
    module, _, tensor = name.rpartition(".")
    return tensor == "weight" and not module.rpartition(".")[2].startswith("ln")
