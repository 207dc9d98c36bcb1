"""The HTML report: self-contained, complete, honest about what is missing, and it renders in Chromium."""
import html
import json
import re
import shutil
import subprocess

import pandas as pd
import pytest

from llc_watch.report import write_report
from llc_watch.run import MissingAnalysisError
from tests.synthetic_tables import write_synthetic_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = write_synthetic_run(tmp_path_factory.mktemp("runs") / "synth")
    path = write_report(run)
    return run, path, path.read_text()


def test_report_is_one_self_contained_file(report):
    run, path, text = report
    assert path == run / "report.html"
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # nothing fetched from anywhere: every src is inline data, no links, imports or url()
    srcs = re.findall(r'\bsrc="([^"]*)"', text)
    assert len(srcs) >= 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for pattern in (r"<link\b", r"<script\b", r"@import", r"url\(", r"https?://", r"<iframe\b"):
        assert not re.search(pattern, text), pattern


def test_report_holds_stages_hyperparameters_and_warnings(report):
    _, _, text = report
    for needle in ("Stage map", "llc_trend", "features_formed", "quiet",           # stage table
                   "train.lr", "model.d_model", "task.name",                     # config.json
                   "epsilon", "nbeta",                                           # LLC settings
                   "LLC checkpoints are invalid", "2 of 4 chains failed",        # diagnostics
                   "Calibration sweep", "Probes",
                   "feature carry forms at step"):                               # the timeline
        assert needle in text, needle
    assert 'class="quiet"' in text


def _trust(text):
    found = re.findall(r'<p class="trust">(.*?)</p>', text)
    return html.unescape(found[0]) if found else None


def test_report_summary_says_how_far_the_llc_levels_can_be_trusted(tmp_path):
    # the addition demo's summary said nothing of its UNTRUSTED calibration, and a green "all 23 LLC
    # estimates are valid" sat beside warnings that 22 had not mixed
    run = write_synthetic_run(tmp_path / "r", tables=("metrics", "llc"))
    text = write_report(run, out_path=tmp_path / "a.html").read_text()
    assert _trust(text).startswith("LLC settings were not calibrated") and "llc-watch calibrate" in _trust(text)
    eps = float(pd.read_csv(run / "llc.csv")["epsilon"].dropna().iloc[0])
    (run / "calibration.json").write_text(json.dumps({"choice": {"epsilon": eps, "untrusted": True}, "warnings": []}))
    text = write_report(run, out_path=tmp_path / "b.html").read_text()
    assert _trust(text).startswith("LLC settings from the calibration, UNTRUSTED") and "But" not in _trust(text)
    (run / "calibration.json").write_text(json.dumps({"choice": {"epsilon": eps * 10}, "per_checkpoint": {
        "1": {"status": "plateau"}}}))
    text = write_report(run, out_path=tmp_path / "c.html").read_text()
    assert _trust(text).startswith("LLC settings from the calibration, PLATEAU")
    assert "not the calibration's" in _trust(text)          # llc.csv at another ε: the verdict does not cover it


def test_report_names_the_commands_for_missing_tables(tmp_path):
    run = write_synthetic_run(tmp_path / "early", tables=("metrics",))
    text = write_report(run, out_path=tmp_path / "r.html").read_text()
    for cmd in ("llc-watch llc", "llc-watch probe", "llc-watch ablate"):
        assert cmd in text
    assert not (run / "report.html").exists() and not (run / "stages.csv").exists()  # --out: nothing in the run
    empty = write_synthetic_run(tmp_path / "empty", tables=())
    with pytest.raises(MissingAnalysisError, match="llc-watch llc"):
        write_report(empty)


_CHECK = ('<script>window.addEventListener("load",()=>{const d=document.createElement("pre");'
          'd.id="llcw-check";d.textContent="IMG"+"CHECK "+JSON.stringify([...document.images].map('
          'i=>[i.complete,i.naturalWidth,i.naturalHeight]));document.body.appendChild(d);});</script>')


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium); "
                                             "CI installs it")
def test_report_renders_in_headless_chromium(report, tmp_path):
    """Load the report (plus a probe script added to a copy) and check every figure decoded."""
    _, _, text = report
    page = tmp_path / "page.html"
    page.write_text(text.replace("</body>", _CHECK + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r"IMGCHECK (\[.*?\]\])", r.stdout)
    assert m, f"no marker in chromium's DOM (rc {r.returncode}): {r.stderr[-1500:]}"
    imgs = json.loads(m.group(1))
    assert len(imgs) == text.count("<img ") >= 4
    assert all(complete and w > 100 and h > 100 for complete, w, h in imgs), imgs


def test_report_defects_are_fixed_on_synthetic_tables(report):
    """Per-chain LLC drawn from llc_per_chain; the settings table lists settings only."""
    _, _, text = report
    assert "No per-chain data to draw" not in text and 'alt="per-chain LLC"' in text
    settings = text.split("LLC estimator (llc.csv)")[1].split("Stage detection")[0]
    assert "epsilon" in settings and "nbeta" in settings
    for data_column in ("llc_per_chain", "mean_loss_trace", "failed_chains", "warnings", "rhat"):
        assert data_column not in settings, data_column
