"""Executors: the same per-checkpoint jobs on the serial, process, submitit-local, Ray and Dask engines.

The engine tests start real engines on this machine (submitit's LocalExecutor, a local Ray cluster
with 2 CPUs, a Dask LocalCluster with 2 single-thread workers); they are marked `engines`, which
the default run deselects:  pytest -m engines tests/test_executors.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from llc_watch.executors import (KINDS, ExecutorConfigError, MissingEngineError, WorkerError, WorkerLostError,
                                 check_executor, executor_from_cli, executor_options, get_executor, job_device,
                                 load_executor_options)
from llc_watch.jobs import run_checkpoint_jobs

TESTS_DIR = Path(__file__).resolve().parent


# --- job functions: top level in this module, which workers import through PYTHONPATH ----------


def loss_job(ckpt, settings):
    """Deterministic: the loss on a fixed seeded batch, plus a seeded random number."""
    torch.set_num_threads(1)
    _inject_fault(ckpt, settings)
    device = job_device(settings)
    model = ckpt.load_model(device)
    task = ckpt.config().make_task()
    batch = task.sample(settings["n"], settings["seed"]).to(device)
    with torch.no_grad():
        loss = task.loss(model(batch.tokens), batch).item()
    g = torch.Generator().manual_seed(settings["seed"] * 100_003 + ckpt.step)
    noise = torch.randn(3, generator=g).sum().item()
    return [{"step": ckpt.step, "measure": "loss", "value": loss},
            {"step": ckpt.step, "measure": "noise", "value": noise}]


def llc_estimate_job(ckpt, settings):
    """A real (tiny) LLC estimate per checkpoint, through the LLC engine's estimator."""
    from llc_watch.llc import estimate_llc
    torch.set_num_threads(1)
    device = job_device(settings)
    task = ckpt.config().make_task()
    data = task.sample(settings["n"], settings["seed"])
    res = estimate_llc(ckpt.load_model(device), lambda m, b: task.loss(m(b.tokens), b), data,
                       chains=2, draws=20, burn_in=10, batch_size=32, seed=settings["seed"], device=device)
    return [{"step": ckpt.step, "measure": "llc", "value": res.llc_mean},
            {"step": ckpt.step, "measure": "init_loss", "value": res.init_loss}]


def _inject_fault(ckpt, settings):
    """On the first attempt at settings['fault_step'], raise, kill the worker process, or wait
    (`fault = "slow"`: long enough to be preempted)."""
    if ckpt.step != settings.get("fault_step"):
        return
    marker = Path(settings["marker_dir"]) / f"attempted-{ckpt.step}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    if settings["fault"] == "raise":
        raise ValueError(f"injected failure at step {ckpt.step}")
    if settings["fault"] == "slow":
        import time
        time.sleep(120)
        return
    os._exit(3)  # the worker dies mid-job, as if killed or out of memory


def _table(report) -> pd.DataFrame:
    df = report.table()  # column order differs between rows read back from disk and fresh ones
    return df[sorted(df.columns)].sort_values(["step", "measure"]).reset_index(drop=True)


SETTINGS = {"n": 64, "seed": 7, "device": "auto"}


@pytest.fixture(scope="module")
def ckpts(tiny_run):
    return tiny_run.checkpoints()[::3]  # 5 of the ~15: enough to interleave, cheap on 2 cores


@pytest.fixture(scope="module")
def reference(ckpts, tmp_path_factory):
    report = run_checkpoint_jobs(loss_job, ckpts, SETTINGS, tmp_path_factory.mktemp("ref"), progress=False)
    assert report.ok and report.ran == len(ckpts)
    return _table(report)


@pytest.fixture(scope="module", autouse=True)
def worker_pythonpath():
    """Workers started by an engine (subprocesses, Ray/Dask workers) import this module by name."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent)] + ([old] if old else []))
    yield
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


# --- options, errors, the built-in executors (default run) ---------------------------------------


def test_serial_default_and_unknown_kind():
    assert get_executor("serial").submit(sum, [1, 2]).result() == 3
    with pytest.raises(ExecutorConfigError, match="choose one of serial, process"):
        get_executor("spark")


def test_missing_engine_names_the_extra(monkeypatch):
    for kind, module, extra in [("ray", "ray", "ray"), ("dask", "distributed", "dask"),
                                ("slurm", "submitit", "slurm"), ("submitit-local", "submitit", "slurm")]:
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail, as if not installed
        with pytest.raises(MissingEngineError, match=rf"pip install 'llc_watch\[{extra}\]'"):
            get_executor(kind)


def test_options_from_toml(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text('executor = "slurm"\n'
                    '[slurm]\ncpus_per_task = 4\ngpus_per_node = 1\nslurm_partition = "gpu"\n'
                    'slurm_additional_parameters = {account = "lab"}\n'
                    '[ray]\naddress = "auto"\ngpus_per_job = 0.5\n'
                    '[dask]\naddress = "tcp://scheduler:8786"\nresources = {GPU = 1}\n')
    cfg = load_executor_options(path)
    assert cfg["executor"] == "slurm"
    slurm = executor_options("slurm", cfg)
    assert slurm["cpus_per_task"] == 4 and slurm["slurm_partition"] == "gpu" and slurm["timeout_min"] == 60
    assert executor_options("submitit-local", cfg)["gpus_per_node"] == 1  # same table, tried locally
    assert executor_options("ray", cfg)["gpus_per_job"] == 0.5
    assert executor_options("dask", cfg)["resources"] == {"GPU": 1}
    assert executor_options("process", cfg)["workers"] == 2  # defaults when the table is absent

    path.write_text("[ray]\nnum_cpu = 2\n")
    with pytest.raises(ExecutorConfigError, match=r"unknown \[ray\] option\(s\) \['num_cpu'\]"):
        load_executor_options(path)
    path.write_text("[spark]\nx = 1\n")
    with pytest.raises(ExecutorConfigError, match=r"unknown table \[spark\]"):
        load_executor_options(path)
    path.write_text('executor = "spark"\n')
    with pytest.raises(ExecutorConfigError, match="executor = 'spark'"):
        load_executor_options(path)
    with pytest.raises(ExecutorConfigError, match="does not exist"):
        load_executor_options(tmp_path / "nope.toml")


def test_cli_flags(tmp_path):
    from concurrent.futures import ProcessPoolExecutor
    from llc_watch.jobs import SerialExecutor
    assert isinstance(executor_from_cli(), SerialExecutor)
    assert isinstance(executor_from_cli("local"), SerialExecutor)
    path = tmp_path / "c.toml"
    path.write_text('executor = "process"\n[process]\nworkers = 1\n')
    with executor_from_cli(config=path, workers=2) as ex:  # the file picks the engine, --workers its size
        assert isinstance(ex, ProcessPoolExecutor) and ex._max_workers == 2
    with executor_from_cli("local", workers=2) as ex:
        assert isinstance(ex, ProcessPoolExecutor)
    with pytest.raises(ExecutorConfigError, match="at least 1"):
        executor_from_cli("process", workers=0)


def test_job_device_resolves_in_the_worker():
    assert job_device({"device": "cpu"}).type == "cpu"
    assert job_device({}).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no usable GPU"):
            job_device({"device": "cuda"})


def test_process_pool_same_table_and_killed_worker(ckpts, reference, tmp_path):
    out = tmp_path / "out"
    settings = {**SETTINGS, "fault_step": ckpts[1].step, "fault": "exit", "marker_dir": str(tmp_path / "m")}
    with get_executor("process", {"workers": 2}) as ex:
        first = run_checkpoint_jobs(loss_job, ckpts, settings, out, executor=ex, progress=False)
    assert not first.ok  # the dead worker broke the pool: its job and those queued behind it failed
    assert ckpts[1].step in {f.step for f in first.failures}
    assert first.ran + len(first.failures) == len(ckpts)
    done_before = {p.name for p in out.glob("*.json")}
    assert len(done_before) == first.ran
    with get_executor("process", {"workers": 2}) as ex:
        second = run_checkpoint_jobs(loss_job, ckpts, settings, out, executor=ex, progress=False)
    assert second.ok and second.skipped == first.ran and second.ran == len(first.failures)
    pd.testing.assert_frame_equal(_table(second), reference, check_exact=True)


# --- real engines (pytest -m engines) ------------------------------------------------------------

ENGINES = ["submitit-local", "ray", "dask"]
ENGINE_OPTIONS = {
    "submitit-local": {"workers": 2, "timeout_min": 10},
    "ray": {"num_cpus": 2, "init": {"object_store_memory": 100 * 2**20}},
    "dask": {"n_workers": 2, "threads_per_worker": 1},
}


@pytest.fixture(scope="module", params=ENGINES)
def engine(request, tiny_run, worker_pythonpath):
    kind = request.param
    ex = get_executor(kind, ENGINE_OPTIONS[kind], run_dir=tiny_run.dir)
    yield kind, ex
    ex.shutdown()


@pytest.mark.engines
def test_engine_runs_anywhere(engine):
    kind, ex = engine
    info = check_executor(ex, n=2, settings={"device": "auto"})
    assert [i["device"] for i in info] == ["cpu", "cpu"] or torch.cuda.is_available()
    assert all(i["pid"] != os.getpid() for i in info)  # really ran in a worker process


@pytest.mark.engines
def test_engine_same_table_as_serial(engine, ckpts, reference, tmp_path, tiny_run):
    kind, ex = engine
    report = run_checkpoint_jobs(loss_job, ckpts, SETTINGS, tmp_path / "out", executor=ex, progress=False)
    assert report.ok, report.summary()
    assert report.ran == len(ckpts)
    pd.testing.assert_frame_equal(_table(report), reference, check_exact=True)
    if kind == "submitit-local":  # job logs are findable from the run folder
        assert list((tiny_run.dir / "logs" / "submitit").glob("*/*_log.out"))


@pytest.fixture(scope="module")
def llc_reference(ckpts, tmp_path_factory):
    pytest.importorskip("llc_watch.llc")
    report = run_checkpoint_jobs(llc_estimate_job, ckpts[:3], SETTINGS, tmp_path_factory.mktemp("llc"),
                                 progress=False)
    assert report.ok, report.summary()
    table = _table(report)
    assert table["value"].notna().all() and (table["value"] != 0).all(), table  # a real estimate
    return table


@pytest.mark.engines
def test_engine_same_llc_table_as_serial(engine, ckpts, llc_reference, tmp_path):
    kind, ex = engine
    report = run_checkpoint_jobs(llc_estimate_job, ckpts[:3], SETTINGS, tmp_path / "llc", executor=ex,
                                 progress=False)
    assert report.ok, report.summary()
    pd.testing.assert_frame_equal(_table(report), llc_reference, check_exact=True)


LLC_SETTINGS = {"chains": 2, "draws": 20, "burn_in": 10, "threads": 1, "seed": 3}


def _run_copy(run, dest: Path) -> Path:
    """A private copy of the shared run: compute_llc writes RUN/llc.csv and RUN/results/llc."""
    import shutil
    dest.mkdir(parents=True)
    shutil.copy(run.dir / "config.json", dest / "config.json")
    shutil.copytree(run.dir / "checkpoints", dest / "checkpoints")
    return dest


def _llc_table(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["sampling_s"]).sort_values("step").reset_index(drop=True)  # timing varies


@pytest.fixture(scope="module")
def llc_job_reference(tiny_run, ckpts, tmp_path_factory):
    job = pytest.importorskip("llc_watch.analyses.llc")
    run_dir = _run_copy(tiny_run, tmp_path_factory.mktemp("llcjob") / "run")
    df = job.compute_llc(run_dir, LLC_SETTINGS, checkpoints=[c.step for c in ckpts[:3]], progress=False)
    assert df["value"].notna().all()   # a failed job would have raised JobsFailed
    return _llc_table(df)


@pytest.mark.engines
def test_engine_llc_command_same_table(engine, tiny_run, ckpts, llc_job_reference, tmp_path):
    """The real LLC job (`llc-watch llc RUN --executor X`'s code path) with tiny settings."""
    from llc_watch.analyses.llc import compute_llc
    kind, ex = engine
    run_dir = _run_copy(tiny_run, tmp_path / "run")
    df = compute_llc(run_dir, LLC_SETTINGS, checkpoints=[c.step for c in ckpts[:3]], executor=ex,
                     progress=False)
    pd.testing.assert_frame_equal(_llc_table(df), llc_job_reference, check_exact=True)
    assert pd.read_csv(run_dir / "llc.csv").shape[0] == 3


@pytest.mark.engines
def test_engine_job_that_raises_is_reported_and_retried_alone(engine, ckpts, reference, tmp_path):
    kind, ex = engine
    bad = ckpts[2]
    settings = {**SETTINGS, "fault_step": bad.step, "fault": "raise", "marker_dir": str(tmp_path / "m")}
    first = run_checkpoint_jobs(loss_job, ckpts, settings, tmp_path / "out", executor=ex, progress=False)
    assert [(f.step, f.checkpoint) for f in first.failures] == [(bad.step, bad.path)]
    assert "injected failure at step" in first.failures[0].error
    assert first.ran == len(ckpts) - 1
    second = run_checkpoint_jobs(loss_job, ckpts, settings, tmp_path / "out", executor=ex, progress=False)
    assert second.ok and second.ran == 1 and second.skipped == len(ckpts) - 1
    pd.testing.assert_frame_equal(_table(second), reference, check_exact=True)


@pytest.mark.engines
def test_engine_killed_worker_recovered_with_nothing_lost(engine, ckpts, reference, tmp_path):
    """Ray and Dask rerun a job whose worker died by themselves; with submitit the job is reported
    lost and the rerun redoes it alone. Either way every other result stays on disk."""
    kind, ex = engine
    victim = ckpts[3]
    out = tmp_path / "out"
    settings = {**SETTINGS, "fault_step": victim.step, "fault": "exit", "marker_dir": str(tmp_path / "m")}
    first = run_checkpoint_jobs(loss_job, ckpts, settings, out, executor=ex, progress=False)
    assert (tmp_path / "m" / f"attempted-{victim.step}").exists()  # the worker really died
    if kind == "submitit-local":
        assert [f.step for f in first.failures] == [victim.step]
        assert "WorkerLostError" in first.failures[0].error
    else:
        assert first.ok, first.summary()
    assert len(list(out.glob("*.json"))) == first.ran
    second = run_checkpoint_jobs(loss_job, ckpts, settings, out, executor=ex, progress=False)
    assert second.ok and second.skipped == first.ran and second.ran == len(ckpts) - first.ran
    pd.testing.assert_frame_equal(_table(second), reference, check_exact=True)


@pytest.mark.engines
def test_submitit_preempted_job_is_requeued(ckpts, reference, tmp_path, worker_pythonpath):
    """Slurm preemption or a time limit sends the job a signal; submitit requeues it (the local
    executor simulates this), and the requeued job redoes the checkpoint from scratch."""
    import signal
    import time
    from llc_watch.jobs import execute_job
    ckpt = ckpts[1]
    settings = {**SETTINGS, "fault_step": ckpt.step, "fault": "slow", "marker_dir": str(tmp_path / "m")}
    with get_executor("submitit-local", {"workers": 1, "timeout_min": 10}, run_dir=tmp_path) as ex:
        fut = ex.submit(execute_job, loss_job, ckpt, settings, str(tmp_path / "out" / "r.json"))
        deadline = time.monotonic() + 120
        while not (tmp_path / "m" / f"attempted-{ckpt.step}").exists():  # the first attempt is running
            assert time.monotonic() < deadline and not fut.done()
            time.sleep(0.2)
        (job,) = list(ex._running)
        time.sleep(1)
        pid = int((tmp_path / "m" / f"attempted-{ckpt.step}").read_text())
        os.kill(pid, signal.SIGUSR2)  # what Slurm sends the job before preemption / its time limit
        signalled = time.monotonic()
        record = fut.result(timeout=300)
    rows = pd.DataFrame(record["rows"])
    want = reference[reference.step == ckpt.step].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows[sorted(rows.columns)], want, check_exact=True)
    assert time.monotonic() - signalled < 100  # not the 120 s sleep: the first attempt was stopped
    assert "Caught signal SIGUSR2" in job.paths.stderr.read_text()
