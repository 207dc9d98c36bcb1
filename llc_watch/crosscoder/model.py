"""A crosscoder over K training snapshots: one shared sparse code, an encoder and a decoder per snapshot.

For the same input seen by K checkpoints, x[k] is its activation at snapshot k. The crosscoder
(Ge et al. 2025, arXiv 2509.17196; Anthropic's crosscoder note, 2024) reads all K at once:

    pre[i]  = sum_k x[k] @ W_enc[k, :, i] + b_enc[i]          one pre-activation per latent i
    f       = act(pre)                                         TopK, BatchTopK or JumpReLU
    x̂[k]    = f @ W_dec[k] + b_dec[k]                          a reconstruction per snapshot

so a latent is one feature shared by every snapshot, and its decoder norm |W_dec[k, i]| at
snapshot k says how strongly snapshot k writes it: a feature that does not exist yet at snapshot k
has a decoder norm near 0 there (reconstructing x[k] gives it nothing to write).

Sparsity is weighted by the decoder norms summed over snapshots, d_i = sum_k |W_dec[k, i]|, so a
latent cannot look sparse by shrinking its code while growing its decoder: TopK and BatchTopK pick
the latents with the largest f_i * d_i; JumpReLU pays tanh(c * f_i * d_i) per active latent.

    >>> import torch
    >>> cc = Crosscoder(n_snapshots=3, d=8, n_latents=16, activation="topk", k=2, seed=0)
    >>> acts = torch.randn(3, 5, 8)                 # [K, N, d]
    >>> f = cc.encode(acts)
    >>> f.shape, int((f > 0).sum(1).max()) <= 2     # [N, m], at most k active per row
    (torch.Size([5, 16]), True)
    >>> cc.decode(f).shape                          # [K, N, d]
    torch.Size([3, 5, 8])
    >>> cc.W_enc.shape, cc.W_dec.shape, cc.decoder_norms().shape
    (torch.Size([3, 8, 16]), torch.Size([3, 16, 8]), torch.Size([3, 16]))
"""
from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = ("topk", "batchtopk", "jumprelu")


class _JumpReLU(torch.autograd.Function):
    """f = z * [z > theta], with a straight-through gradient for theta (Rajamanoharan et al. 2024).

    d f / d z = [z > theta]; d f / d theta = -(theta / eps) * rect((z - theta) / eps), the jump's
    height times a box kernel of width eps around the threshold (the only place theta matters).
    """

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        near = ((z - theta).abs() < eps / 2).to(grad.dtype)
        grad_theta = (grad * -(theta / eps) * near).sum(0)
        return grad * (z > theta).to(grad.dtype), grad_theta, None


class Crosscoder(nn.Module):
    """Crosscoder over `n_snapshots` snapshots of width-`d` activations with `n_latents` features.

    activation: "topk" (k largest f_i * d_i per row), "batchtopk" (the k * N largest over a batch of
    N rows; at inference a learned threshold replaces the batch, so a row's code does not depend on
    its neighbours), or "jumprelu" (a learned threshold per latent).
    Decoder rows start as random unit directions, the same at every snapshot, with norm
    `init_norm` per snapshot; the encoder starts as the decoder's transpose (a common, stable start).
    """

    def __init__(self, n_snapshots: int, d: int, n_latents: int, activation: str = "batchtopk",
                 k: int = 8, init_norm: float = 0.1, jump_init: float = 0.01, jump_eps: float = 0.01,
                 seed: int = 0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"crosscoder activation={activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        self.n_snapshots, self.d, self.n_latents = n_snapshots, d, n_latents
        self.activation, self.k, self.jump_eps = activation, k, jump_eps
        g = torch.Generator().manual_seed(seed)
        direction = torch.randn(n_latents, d, generator=g)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        W_dec = direction.expand(n_snapshots, n_latents, d) * init_norm        # [K, m, d]
        self.W_dec = nn.Parameter(W_dec.clone())
        self.W_enc = nn.Parameter(W_dec.transpose(1, 2).clone())               # [K, d, m]
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(n_snapshots, d))
        self.log_threshold = nn.Parameter(torch.full((n_latents,), float(torch.log(torch.tensor(jump_init)))),
                                          requires_grad=activation == "jumprelu")
        # BatchTopK's inference threshold on f_i * d_i, a running mean of the smallest kept score
        self.register_buffer("batch_threshold", torch.tensor(-1.0))

    # ------------------------------------------------------------------------------------------
    def decoder_norms(self) -> torch.Tensor:
        """|W_dec[k, i]| as [K, m]: feature i's strength at snapshot k."""
        return self.W_dec.norm(dim=-1)

    def pre_activations(self, acts: torch.Tensor) -> torch.Tensor:
        """acts [K, N, d] -> [N, m]: encoder contributions summed over snapshots, plus the bias."""
        return torch.einsum("knd,kdm->nm", acts, self.W_enc) + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Pre-activations [N, m] -> sparse code [N, m] (training mode uses batch statistics)."""
        if self.activation == "jumprelu":
            return _JumpReLU.apply(pre, self.log_threshold.exp(), self.jump_eps)
        f = torch.relu(pre)
        score = f * self.decoder_norms().sum(0).detach()        # decoder-norm-weighted sparsity
        if self.activation == "topk":
            keep = torch.zeros_like(f, dtype=torch.bool)
            keep.scatter_(1, score.topk(min(self.k, self.n_latents), dim=1).indices, True)
            return f * keep
        # batchtopk
        if self.training or self.batch_threshold < 0:
            n_keep = min(self.k * f.shape[0], f.numel())
            flat = score.flatten()
            top = flat.topk(n_keep)
            keep = torch.zeros_like(flat, dtype=torch.bool)
            keep[top.indices] = True
            if self.training:
                smallest = top.values[top.values > 0].min() if (top.values > 0).any() else top.values.new_tensor(0.0)
                with torch.no_grad():
                    t = self.batch_threshold
                    self.batch_threshold.copy_(smallest if t < 0 else 0.99 * t + 0.01 * smallest)
            return f * keep.view_as(f)
        return f * (score > self.batch_threshold)

    def encode(self, acts: torch.Tensor) -> torch.Tensor:
        """acts [K, N, d] -> sparse code [N, m]."""
        return self.activate(self.pre_activations(acts))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Code [N, m] -> reconstruction [K, N, d]."""
        return torch.einsum("nm,kmd->knd", f, self.W_dec) + self.b_dec[:, None, :]

    def forward(self, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction [K, N, d], code [N, m], pre-activations [N, m])."""
        pre = self.pre_activations(acts)
        f = self.activate(pre)
        return self.decode(f), f, pre

    def extra_repr(self) -> str:
        return (f"n_snapshots={self.n_snapshots}, d={self.d}, n_latents={self.n_latents}, "
                f"activation={self.activation}, k={self.k}")


__all__ = ["Crosscoder", "ACTIVATIONS"]
