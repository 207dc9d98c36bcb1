"""In-context linear regression, the setting of Hoogland et al. 2024 (arXiv 2402.02364).

Each example draws a task vector w ~ N(0, I_D) (infinite pool) or uniformly from a fixed pool of
`task_pool_size` vectors (drawn once from N(0, I_D) with `pool_seed`), inputs x_k ~ N(0, I_D) and
outputs y_k = w·x_k + ε_k, ε_k ~ N(0, noise_var), k = 1..K. The context interleaves them as vectors
in R^{D+1}:

    x-token (0, x_k),  y-token (y_k, 0, …, 0):   x_1 y_1 x_2 y_2 … x_K y_K

The model reads the first 2K - 1 tokens (Task.output = "continuous": float [B, 2K-1, D+1]) and,
at the position of each x_k, predicts y_k (d_out = 1). The loss is the squared error at those K
positions, averaged (the base Task.loss). Positions of y-tokens are masked out.

Accuracy (`per_example_correct`): an example is correct when the prediction at the *last* query x_K
lies within `tolerance` (default 0.5) of the noise-free value w·x_K. With K - 1 = 15 examples
in context and D = 4 the Bayes-optimal (ridge) prediction meets this almost always, a predictor that
ignores the context almost never. `within_tolerance` gives the per-position version.

Feature labels at the x_k positions (the state predicting y_k), from the k - 1 examples before it:
  * `lstsq_{i}`    least-squares estimate of w (minimum-norm solution while k - 1 < D), i < D
  * `ridge_{i}`    ridge estimate (X^T X + noise_var I)^-1 X^T y: the posterior mean of w under
                   the N(0, I) prior, i.e. the Bayes-optimal estimate for the infinite pool
  * `w_{i}`        the true task vector
  * `ridge_pred`   ridge estimate · x_k (the Bayes-optimal prediction, infinite pool)
  * `target_clean` w · x_k

    >>> task = ICLRegression()
    >>> b = task.sample(8, seed=0)
    >>> b.tokens.shape, b.targets.shape      # [B, 2K - 1, D + 1], [B, 2K - 1, 1]
    (torch.Size([8, 31, 5]), torch.Size([8, 31, 1]))
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import Batch, FeatureSpec, Task, TaskConfigError


@dataclass
class ICLRegression(Task):
    n_dims: int = 4             # D, the input dimension
    n_examples: int = 16        # K, (x, y) pairs per context
    noise_var: float = 0.125    # variance of the label noise ε
    task_pool_size: int = 0     # 0: infinite pool (fresh w per example); M > 0: a fixed pool of M vectors
    pool_seed: int = 0          # seed of the fixed pool (task_pool_size > 0)
    tolerance: float = 0.5      # accuracy: |prediction at x_K - w·x_K| <= tolerance

    name = "icl_regression"
    output = "continuous"
    summary = ("in-context linear regression (D=4, K=16); MSE loss; features: least-squares and ridge "
               "estimates so far, the true task vector")

    def __post_init__(self):
        def need(ok, field, why):
            if not ok:
                raise TaskConfigError(f"{self.name}: {field}={getattr(self, field)!r} {why}")
        isint = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
        isnum = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
        need(isint(self.n_dims) and 1 <= self.n_dims <= 256, "n_dims", "must be an integer from 1 to 256")
        need(isint(self.n_examples) and 1 <= self.n_examples <= 1024, "n_examples",
             "must be an integer from 1 to 1024")
        need(isnum(self.noise_var) and self.noise_var >= 0, "noise_var", "must be a number >= 0")
        need(isint(self.task_pool_size) and self.task_pool_size >= 0, "task_pool_size",
             "must be an integer >= 0 (0 = an infinite task pool)")
        need(isint(self.pool_seed), "pool_seed", "must be an integer")
        need(isnum(self.tolerance) and self.tolerance > 0, "tolerance", "must be a number > 0")

    @property
    def vocab(self):
        return []   # continuous inputs: no token vocabulary

    @property
    def features(self):
        D = self.n_dims
        out = {}
        for i in range(D):
            out[f"lstsq_{i}"] = FeatureSpec("numeric", f"least-squares estimate of w_{i} from the examples so far")
        for i in range(D):
            out[f"ridge_{i}"] = FeatureSpec("numeric", f"ridge (posterior-mean) estimate of w_{i} from the examples so far")
        for i in range(D):
            out[f"w_{i}"] = FeatureSpec("numeric", f"true task vector component w_{i}")
        out["ridge_pred"] = FeatureSpec("numeric", "ridge estimate · x_k: the Bayes-optimal prediction")
        out["target_clean"] = FeatureSpec("numeric", "w · x_k, the noise-free target")
        return out

    def pool(self) -> np.ndarray | None:
        if not self.task_pool_size:
            return None
        rng = np.random.default_rng([int(self.pool_seed), 7])
        return rng.standard_normal((self.task_pool_size, self.n_dims))

    def sample(self, n, seed):
        rng = np.random.default_rng(int(seed))
        D, K = self.n_dims, self.n_examples
        pool = self.pool()
        w = rng.standard_normal((n, D)) if pool is None else pool[rng.integers(0, len(pool), size=n)]
        x = rng.standard_normal((n, K, D))
        y = np.einsum("bkd,bd->bk", x, w) + np.sqrt(self.noise_var) * rng.standard_normal((n, K))
        return self.encode(w, x, y)

    def encode(self, w, x, y) -> Batch:
        """w [B, D], x [B, K, D], y [B, K] (float64 arrays) -> Batch."""
        w, x, y = (np.asarray(a, dtype=np.float64) for a in (w, x, y))
        B, K, D = x.shape
        if (D, K) != (self.n_dims, self.n_examples) or w.shape != (B, D) or y.shape != (B, K):
            raise TaskConfigError(f"{self.name}: expected w [B, {self.n_dims}], x [B, {self.n_examples}, "
                                  f"{self.n_dims}], y [B, {self.n_examples}]")
        seq = np.zeros((B, 2 * K, D + 1))
        seq[:, 0::2, 1:] = x
        seq[:, 1::2, 0] = y
        T = 2 * K - 1
        targets = np.zeros((B, T, 1))
        targets[:, 0::2, 0] = y
        mask = np.zeros((B, T), dtype=bool)
        mask[:, 0::2] = True
        f = {k: np.full((B, T), np.nan) for k in self.features}
        xpos = np.arange(0, T, 2)
        for i in range(D):
            f[f"w_{i}"][:, xpos] = w[:, i:i + 1]
        f["target_clean"][:, xpos] = np.einsum("bkd,bd->bk", x, w)
        eye = np.eye(D)
        for k in range(K):          # estimates from examples 0..k-1, at the position of x_k
            Xk, yk = x[:, :k], y[:, :k]
            XtX = np.einsum("bkd,bke->bde", Xk, Xk)
            Xty = np.einsum("bkd,bk->bd", Xk, yk)
            ridge = np.linalg.solve(XtX + max(self.noise_var, 1e-12) * eye, Xty[..., None])[..., 0]
            # minimum-norm least squares without an SVD per step (pinv was 80 % of sampling time);
            # Gaussian inputs make X (k < D) or X^T X (k >= D) full rank almost surely
            if k == 0:
                lstsq = np.zeros((B, D))
            elif k < D:
                lstsq = np.einsum("bkd,bk->bd", Xk, np.linalg.solve(np.einsum("bkd,bjd->bkj", Xk, Xk), yk[..., None])[..., 0])
            else:
                lstsq = np.linalg.solve(XtX, Xty[..., None])[..., 0]
            for i in range(D):
                f[f"ridge_{i}"][:, 2 * k] = ridge[:, i]
                f[f"lstsq_{i}"][:, 2 * k] = lstsq[:, i]
            f["ridge_pred"][:, 2 * k] = np.einsum("bd,bd->b", ridge, x[:, k])
        t = lambda a: torch.from_numpy(a).float()
        return Batch(t(seq[:, :-1]), t(targets), torch.from_numpy(mask), {k: t(v) for k, v in f.items()})

    # --- metrics ---
    def within_tolerance(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        """bool [B, T]: prediction within `tolerance` of the noise-free target (False off-answer)."""
        clean = batch.features["target_clean"].to(output.device)
        return ((output[..., 0] - clean).abs() <= self.tolerance) & batch.loss_mask

    def per_example_correct(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        """bool [B]: the prediction at the last query x_K is within `tolerance` of w·x_K."""
        return self.within_tolerance(output, batch)[:, -1]


TASK_CLASSES = (ICLRegression,)
