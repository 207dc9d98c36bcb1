"""A small decoder-only transformer in plain torch, with named activation sites.

Sites are named as in TransformerLens, so they read familiarly:

    hook_embed                    [B, T, d_model]  token (+ learned position) embedding
    blocks.{l}.hook_resid_pre     [B, T, d_model]  residual stream entering block l
    blocks.{l}.attn.hook_pattern  [B, H, T, T]     attention probabilities
    blocks.{l}.attn.hook_z        [B, T, H, d_head] per-head attention values, before W_O
    blocks.{l}.hook_attn_out      [B, T, d_model]  attention output added to the residual
    blocks.{l}.hook_resid_mid     [B, T, d_model]  residual after attention
    blocks.{l}.mlp.hook_post      [B, T, d_mlp]    MLP neuron activations
    blocks.{l}.hook_mlp_out       [B, T, d_model]  MLP output added to the residual
    blocks.{l}.hook_resid_post    [B, T, d_model]  residual leaving block l

Reading and editing go through forward arguments, not module state, so the model stays a pure
function of (parameters, input) and works under torch.func.functional_call and vmap:

    >>> import torch
    >>> model = Transformer(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, vocab_size=5, n_ctx=16))
    >>> tokens = torch.zeros(3, 10, dtype=torch.long)
    >>> cache = {}
    >>> logits = model(tokens, cache=cache)                    # [3, 10, 5]
    >>> cache["blocks.1.hook_resid_post"].shape
    torch.Size([3, 10, 32])
    >>> zero = lambda x: torch.zeros_like(x)
    >>> edited = model(tokens, hooks={"blocks.1.hook_resid_post": zero})   # an edit changes the output
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Hook = Callable[[torch.Tensor], "torch.Tensor | None"]


class ModelConfigError(ValueError):
    """A model setting that cannot work; the message names it."""


@dataclass
class ModelConfig:
    n_layers: int = 2          # transformer blocks
    d_model: int = 64          # residual stream width
    n_heads: int = 4           # attention heads; d_model must divide evenly
    d_mlp: int = 256           # MLP hidden width; 0 = attention-only blocks
    act: str = "gelu"          # MLP nonlinearity: relu | gelu | silu
    norm: str = "layernorm"    # layernorm | rmsnorm | none (Nanda's grokking model has none)
    pos: str = "learned"       # learned | rotary position information
    vocab_size: int = 0        # set from the task (token tasks)
    n_ctx: int = 0             # set from the task: longest input
    d_in: int = 0              # continuous-input tasks: input vector width (0 = token input)
    d_out: int = 0             # continuous-output tasks: output width (0 = logits over vocab)
    init_std: float = 0.02     # weight init standard deviation

    def validate(self) -> None:
        def bad(field, why):
            raise ModelConfigError(f"model.{field}={getattr(self, field)!r}: {why}")
        for f in ("n_layers", "d_model", "n_heads"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 1:
                bad(f, "must be a positive integer")
        if self.d_model % self.n_heads:
            bad("d_model", f"must be divisible by n_heads={self.n_heads}")
        if self.pos == "rotary" and (self.d_model // self.n_heads) % 2:
            bad("pos", "rotary positions need an even head width (d_model / n_heads)")
        if self.d_mlp < 0:
            bad("d_mlp", "must be >= 0 (0 means no MLP)")
        if self.act not in ACTIVATIONS:
            bad("act", f"choose one of {sorted(ACTIVATIONS)}")
        if self.norm not in ("layernorm", "rmsnorm", "none"):
            bad("norm", "choose layernorm, rmsnorm or none")
        if self.pos not in ("learned", "rotary"):
            bad("pos", "choose learned or rotary")
        if self.n_ctx < 1:
            bad("n_ctx", "must be >= 1 (it is set from the task)")
        if self.d_in == 0 and self.vocab_size < 2:
            bad("vocab_size", "must be >= 2 for token input (it is set from the task)")


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


class Sites:
    """Routes a value through a named site: records it into `cache`, lets a hook replace it."""

    def __init__(self, hooks: dict[str, Hook] | None, cache: dict | None):
        self.hooks, self.cache = hooks or {}, cache

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        hook = self.hooks.get(name)
        if hook is not None:
            out = hook(x)
            x = x if out is None else out
        if self.cache is not None:
            self.cache[name] = x
        return x


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(kind: str, d: int) -> nn.Module:
    return {"layernorm": lambda: nn.LayerNorm(d), "rmsnorm": lambda: RMSNorm(d), "none": nn.Identity}[kind]()


def rotary(x: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels of x [B, T, H, d_head] by position-dependent angles (RoPE)."""
    T, d = x.shape[-3], x.shape[-1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
    angles = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv_freq  # [T, d/2]
    cos, sin = angles.cos()[:, None, :].to(x.dtype), angles.sin()[:, None, :].to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.d_head, self.rotary = cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.pos == "rotary"
        self.W_QKV = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.W_O = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x, sites: Sites, prefix: str):
        B, T, D = x.shape
        q, k, v = self.W_QKV(x).view(B, T, 3, self.n_heads, self.d_head).unbind(2)  # [B, T, H, dh]
        if self.rotary:
            q, k = rotary(q), rotary(k)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.d_head)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        pattern = sites(f"{prefix}.attn.hook_pattern", scores.softmax(-1))
        z = sites(f"{prefix}.attn.hook_z", torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        return self.W_O(z.reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in, self.W_out = nn.Linear(cfg.d_model, cfg.d_mlp), nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = ACTIVATIONS[cfg.act]

    def forward(self, x, sites: Sites, prefix: str):
        return self.W_out(sites(f"{prefix}.mlp.hook_post", self.act(self.W_in(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1, self.attn = make_norm(cfg.norm, cfg.d_model), Attention(cfg)
        self.has_mlp = cfg.d_mlp > 0
        if self.has_mlp:
            self.ln2, self.mlp = make_norm(cfg.norm, cfg.d_model), MLP(cfg)

    def forward(self, x, sites: Sites, prefix: str):
        x = sites(f"{prefix}.hook_resid_pre", x)
        x = x + sites(f"{prefix}.hook_attn_out", self.attn(self.ln1(x), sites, prefix))
        x = sites(f"{prefix}.hook_resid_mid", x)
        if self.has_mlp:
            x = x + sites(f"{prefix}.hook_mlp_out", self.mlp(self.ln2(x), sites, prefix))
        return sites(f"{prefix}.hook_resid_post", x)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.d_in, cfg.d_model) if cfg.d_in else nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(cfg.n_ctx, cfg.d_model))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = make_norm(cfg.norm, cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_out or cfg.vocab_size)
        self.apply(self._init)

    def _init(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.cfg.init_std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        if m is self and self.cfg.pos == "learned":
            nn.init.normal_(self.pos_embed, std=self.cfg.init_std)

    @property
    def site_names(self) -> list[str]:
        """Every named site, in forward order."""
        names = ["hook_embed"]
        for l in range(self.cfg.n_layers):
            p = f"blocks.{l}"
            names += [f"{p}.hook_resid_pre", f"{p}.attn.hook_pattern", f"{p}.attn.hook_z",
                      f"{p}.hook_attn_out", f"{p}.hook_resid_mid"]
            if self.cfg.d_mlp:
                names += [f"{p}.mlp.hook_post", f"{p}.hook_mlp_out"]
            names.append(f"{p}.hook_resid_post")
        return names

    def forward(self, tokens: torch.Tensor, hooks: dict[str, Hook] | None = None,
                cache: dict | None = None) -> torch.Tensor:
        """tokens: int [B, T] (or float [B, T, d_in]); returns [B, T, vocab_size or d_out].

        hooks: site name -> fn(x) returning a replacement (or None to keep x).
        cache: a dict that receives every site's value (after its hook).
        """
        T = tokens.shape[1]
        if T > self.cfg.n_ctx:
            raise ValueError(f"input length {T} exceeds the model's context n_ctx={self.cfg.n_ctx}")
        unknown = set(hooks or {}) - set(self.site_names)
        if unknown:
            raise KeyError(f"no such site(s) {sorted(unknown)}; see Transformer.site_names")
        sites = Sites(hooks, cache)
        x = self.embed(tokens)
        if self.cfg.pos == "learned":
            x = x + self.pos_embed[:T]
        x = sites("hook_embed", x)
        for l, block in enumerate(self.blocks):
            x = block(x, sites, f"blocks.{l}")
        return self.unembed(self.ln_final(x))

    def run_with_cache(self, tokens, names: list[str] | None = None, hooks=None):
        """(output, {site: activation}) keeping only `names` (default: every site)."""
        cache: dict = {}
        out = self(tokens, hooks=hooks, cache=cache)
        return out, (cache if names is None else {n: cache[n] for n in names})
