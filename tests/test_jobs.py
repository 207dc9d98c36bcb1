"""The per-checkpoint driver: idempotent, atomic, failures isolated, settings kept apart."""
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from llc_watch.jobs import JobsFailed, SerialExecutor, make_executor, run_checkpoint_jobs

CALLS = []


def loss_job(checkpoint, settings):
    """Loss of the checkpoint on a seeded batch, plus a seeded random number."""
    CALLS.append(checkpoint.step)
    model = checkpoint.load_model()
    task = checkpoint.config().make_task()
    batch = task.sample(settings["n"], seed=settings["seed"])
    with torch.no_grad():
        loss = task.loss(model(batch.tokens), batch).item()
    g = torch.Generator().manual_seed(settings["seed"] * 1000 + checkpoint.step)
    return [{"step": checkpoint.step, "measure": "loss", "value": loss},
            {"step": checkpoint.step, "measure": "noise", "value": torch.rand(1, generator=g).item()}]


def test_rerun_skips_finished_and_gives_the_same_table(tiny_run, tmp_path):
    ckpts = tiny_run.checkpoints()
    CALLS.clear()
    first = run_checkpoint_jobs(loss_job, ckpts, {"n": 16, "seed": 1}, tmp_path, progress=False)
    assert first.ran == len(ckpts) and sorted(CALLS) == [c.step for c in ckpts]
    CALLS.clear()
    again = run_checkpoint_jobs(loss_job, ckpts, {"n": 16, "seed": 1}, tmp_path, progress=False)
    assert CALLS == [] and again.skipped == len(ckpts)
    assert again.table().equals(first.table())
    assert set(first.table().columns) >= {"step", "measure", "value"}
    assert len(first.table()) == 2 * len(ckpts)


def test_changed_settings_make_new_results_beside_the_old(tiny_run, tmp_path):
    ckpts = tiny_run.checkpoints()[:3]
    a = run_checkpoint_jobs(loss_job, ckpts, {"n": 16, "seed": 1}, tmp_path, progress=False)
    b = run_checkpoint_jobs(loss_job, ckpts, {"n": 16, "seed": 2}, tmp_path, progress=False)
    assert b.ran == 3 and len(list(tmp_path.glob("*.json"))) == 6
    assert not a.table().equals(b.table())
    # each table holds only its own settings
    assert a.table().equals(run_checkpoint_jobs(loss_job, ckpts, {"n": 16, "seed": 1}, tmp_path,
                                                progress=False).table())


def test_a_corrupt_checkpoint_fails_alone(tiny_run, tmp_path):
    import shutil
    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run.dir, run_dir)
    from llc_watch.checkpoints import open_run
    ckpts = open_run(run_dir).checkpoints()
    bad = Path(ckpts[2].path)
    bad.write_bytes(bad.read_bytes()[:100])
    report = run_checkpoint_jobs(loss_job, ckpts, {"n": 8, "seed": 0}, tmp_path / "out", progress=False)
    assert [f.step for f in report.failures] == [ckpts[2].step]
    # the advice is what works: leave it out (training does not rewrite a finished run's checkpoint; issue 17)
    assert bad.name in report.failures[0].error and "--checkpoints" in report.failures[0].error
    assert report.ran == len(ckpts) - 1
    with pytest.raises(JobsFailed, match=f"step {ckpts[2].step}"):
        report.raise_if_failed("loss")


@pytest.mark.parametrize("executor", ["threads", "process"])
def test_executors_give_the_serial_table(tiny_run, tmp_path, executor):
    ckpts = tiny_run.checkpoints()[:4]
    serial = run_checkpoint_jobs(loss_job, ckpts, {"n": 16, "seed": 3}, tmp_path / "s", progress=False)
    ex = ThreadPoolExecutor(2) if executor == "threads" else make_executor("process", workers=2)
    with ex:
        other = run_checkpoint_jobs(loss_job, ckpts, {"n": 16, "seed": 3}, tmp_path / "o", executor=ex,
                                    progress=False)
    assert other.table().equals(serial.table())


def test_killed_driver_keeps_what_finished(tiny_run, tmp_path):
    """kill -9 the driver mid-way: finished results stay whole; a rerun does only the rest."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_jobs import loss_job
        from llc_watch.checkpoints import open_run
        from llc_watch.jobs import run_checkpoint_jobs
        ckpts = open_run({str(tiny_run.dir)!r}).checkpoints()
        def slow_then_die(ckpt, settings):
            if ckpt.step == ckpts[3].step:
                os.kill(os.getpid(), 9)
            return loss_job(ckpt, settings)
        slow_then_die.__module__, slow_then_die.__qualname__ = "test_jobs", "loss_job"  # same job key
        run_checkpoint_jobs(slow_then_die, ckpts, {{"n": 16, "seed": 5}}, {str(out)!r}, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    done = sorted(out.glob("*.json"))
    assert len(done) == 3 and all(json.loads(p.read_text())["rows"] for p in done)
    CALLS.clear()
    ckpts = tiny_run.checkpoints()
    report = run_checkpoint_jobs(loss_job, ckpts, {"n": 16, "seed": 5}, out, progress=False)
    assert report.skipped == 3 and sorted(CALLS) == [c.step for c in ckpts[3:]]
    full = run_checkpoint_jobs(loss_job, ckpts, {"n": 16, "seed": 5}, tmp_path / "uninterrupted", progress=False)
    assert report.table().equals(full.table())


def test_serial_executor_runs_jobs_one_at_a_time_in_order():
    order = []
    ex = SerialExecutor()
    futs = [ex.submit(order.append, i) for i in range(3)]
    assert order == []          # lazy: nothing runs at submit
    [f.result() for f in futs]
    assert order == [0, 1, 2]
    boom = ex.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        boom.result()
