"""The problem llc_watch needs for the MLP of train_mlp.py: its architecture, its loss, its data.

    llc-watch llc --problem examples.byo_mlp.problem:make --checkpoint-dir ckpts --out runs/mlp
"""
from examples.byo_mlp.train_mlp import mlp, teacher_data


def mse(model, batch):
    x, y = batch
    return ((model(x).squeeze(-1) - y) ** 2).mean()


def make():
    return {"model": mlp(), "loss": mse, "data": teacher_data()}
