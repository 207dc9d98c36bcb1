"""A plain PyTorch training script that knows nothing of llc_watch: a small MLP learns a noisy
teacher network, saving its state dict every few steps as ckpts/step_<N>.pt.

    python examples/byo_mlp/train_mlp.py ckpts        # ~10 s on a laptop CPU
"""
import sys
from pathlib import Path

import torch
from torch import nn


def teacher_data(n=1024, d_in=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    w = torch.randn(d_in, 1, generator=g)
    y = torch.tanh(x @ w).squeeze(-1) + 0.1 * torch.randn(n, generator=g)
    return x, y


def mlp(d_in=8, width=16):
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, 1))


def main(out="ckpts", steps=400, save_every=50, seed=0):
    torch.manual_seed(seed)
    x, y = teacher_data()
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for step in range(steps + 1):
        if step % save_every == 0:
            torch.save(model.state_dict(), out / f"step_{step}.pt")
        idx = torch.randint(0, len(x), (64,))
        loss = ((model(x[idx]).squeeze(-1) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"saved {len(list(out.glob('*.pt')))} checkpoints in {out}; final batch loss {loss.item():.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
