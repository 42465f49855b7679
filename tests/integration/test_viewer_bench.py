"""`bench-viewers --quick` as a smoke test: run end to end as a person runs it, every figure is
produced and sane, and every process it started is gone afterwards. It never asserts speed.

Chromium comes from the system (/usr/bin/chromium, or CQRS_E2E_CHROMIUM); without it the run is
skipped, unless CQRS_REQUIRE_E2E=1 (CI) says it must run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from server_processes import postmasters_under, stop_process_group

from cqrs_core.cli import main
from cqrs_core.projections import PROJECTION_NAMES
from cqrs_core.tools.viewer_report import ViewerBenchReport, format_report

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CQRS_E2E_CHROMIUM", "/usr/bin/chromium"))
VIEWERS, PROBES = 2, 2
PHASES = ["baseline", "alone", "opening", "window", "probes"]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = f"No Chromium at {CHROMIUM}: install Debian's `chromium` package to run bench-viewers."
    if os.environ.get("CQRS_REQUIRE_E2E") == "1":
        pytest.fail(reason + " CQRS_REQUIRE_E2E=1 requires it.", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def quick_run(chromium):
    """`cqrs-console bench-viewers --quick` with 2 viewers, 100 workflows, an 8 s window and 2
    probes, in a process group of its own: (exit code, stdout, stderr, JSON report, its temp dir).
    The temp dir's path is short: Chromium refuses a profile whose socket path is too long."""
    tmp = Path(tempfile.mkdtemp(prefix="bv-"))
    out = tmp / "report.json"
    command = [sys.executable, "-m", "cqrs_core", "bench-viewers", "--quick", "--viewers", str(VIEWERS)]
    command += ["--workflows", "100", "--seconds", "8", "--probes", str(PROBES)]
    command += ["--chromium", str(chromium), "--json", str(out)]
    bench = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp)},  # the scratch server's data directory lands here
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = bench.communicate(timeout=240)
    finally:
        stop_process_group(bench)  # only acts if the bench itself did not finish
    report = json.loads(out.read_text()) if out.exists() else None
    yield bench.returncode, stdout, stderr, report, tmp
    shutil.rmtree(tmp, ignore_errors=True)


def number(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= 0


def test_quick_run_succeeds_and_prints_every_figure(quick_run):
    code, stdout, stderr, report, _ = quick_run

    assert code == 0, stderr[-2000:]
    assert report is not None and report["mode"] == "quick"
    for figure in (
        "new viewer, time to data",
        "new viewer alone, time to data",
        "stages of a new viewer",
        "app CPU",
        "PostgreSQL CPU",
        "Chromium CPU",
        "lag samples skipped",
        "command latency",
    ):
        assert figure in stdout
    assert "Traceback" not in stderr


def test_the_json_file_holds_the_whole_printed_report(quick_run):
    _, stdout, _, report, _ = quick_run

    assert format_report(ViewerBenchReport.from_dict(report)) == stdout.rstrip("\n")


def test_every_viewer_opened_is_counted_once(quick_run):
    report = quick_run[3]
    viewers, probes, alone = report["viewers"], report["probes"], report["alone"]

    assert viewers["asked"] == viewers["viewers"] == VIEWERS
    for figure in (probes, alone):
        assert figure["asked"] == PROBES and 1 <= figure["viewers"] <= PROBES
    for figure in (viewers, probes, alone):
        assert figure["shown"] + figure["timed_out"] == figure["viewers"]
        assert sum(figure["timed_out_seen"].values()) == figure["timed_out"]
        assert sum(len(seconds) for seconds in figure["by_page"].values()) == figure["viewers"]
        assert 0 <= figure["p50_s"] <= figure["p95_s"] <= figure["max_s"] <= figure["timeout_seconds"]
    assert list(viewers["by_page"]) == ["Overview", "Projections"]  # the stated mix, in turn


def test_cpu_is_a_number_per_process_group_and_phase(quick_run):
    report = quick_run[3]
    phases = {p["name"]: p for p in report["phases"]}

    assert list(phases) == PHASES
    assert [p["tabs"] for p in report["phases"]] == [0, 0, VIEWERS, VIEWERS, VIEWERS]
    for phase in phases.values():
        cpu = phase["cpu"]
        assert cpu["seconds"] > 0
        assert all(
            number(cpu[g]) for g in ("app", "postgres", "browser", "load", "bench", "machine", "other")
        )
    # a served app with live tabs and a browser drawing pages both did some work
    assert phases["opening"]["cpu"]["app"] > 0 and phases["opening"]["cpu"]["browser"] > 0
    assert report["app"]["started_by_bench"] and report["app"]["postgres_pid"] is not None


def test_a_visit_is_timed_stage_by_stage_in_order(quick_run):
    """HTML, socket, first run and data, each measured in the page from the navigation's start:
    the stages come in the order a visit goes through them, the data last."""
    for key in ("viewers", "probes", "alone"):
        figure = quick_run[3][key]
        if not figure["shown"]:
            continue
        stages = figure["stages_p50_s"]
        assert list(stages) == ["html", "connected", "run started", "run done", "data"], stages
        seconds = list(stages.values())
        assert all(number(s) for s in seconds)
        # the run may end after the data is drawn (its last fragment is still running)
        assert seconds[:3] == sorted(seconds[:3]) and stages["run started"] <= stages["run done"]
        assert stages["run started"] <= stages["data"]
        assert stages["data"] <= figure["max_s"]


def test_lag_samples_are_counted_per_projection_from_the_database(quick_run):
    for phase in quick_run[3]["phases"]:
        lag = phase["lag"]
        assert lag["interval_seconds"] > 0 and lag["expected"] > 0
        assert sorted(lag["skipped_by_projection"]) == sorted(PROJECTION_NAMES)
        assert lag["skipped"] == sum(lag["skipped_by_projection"].values()) >= 0
        assert 0 <= lag["gaps"] <= lag["skipped"]
        assert lag["recorded"] > 0  # the app's sampler wrote samples in every phase


def test_command_latency_comes_from_the_load_in_every_phase(quick_run):
    for phase in quick_run[3]["phases"]:
        commands = phase["commands"]
        assert commands["commands"] > 0 and commands["achieved_rate"] > 0
        assert 0 < commands["p50_ms"] <= commands["p95_ms"] <= commands["p99_ms"] <= commands["max_ms"]


def test_no_process_it_started_outlives_it(quick_run):
    report, tmp = quick_run[3], quick_run[4]
    started = {report["app"]["pid"], report["app"]["postgres_pid"]}
    for group in ("app", "postgres", "browser", "load"):
        started.update(report["processes"][group])

    alive = []
    for pid in started:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    assert alive == []
    assert postmasters_under(tmp) == []


def test_a_missing_chromium_is_one_line_and_exit_code_2(tmp_path, capsys):
    code = main(["bench-viewers", "--quick", "--chromium", str(tmp_path / "no-chromium")])

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "No Chromium at" in err and "Traceback" not in err


def test_the_app_it_serves_does_not_outlive_a_bench_killed_outright(chromium):
    """A bench killed with SIGKILL runs no cleanup; the app it served must stop anyway (it was
    left running before, taking CPU from every later run)."""
    import re
    import signal
    import time

    tmp = Path(tempfile.mkdtemp(prefix="bv-"))
    command = [sys.executable, "-m", "cqrs_core", "bench-viewers", "--quick", "--viewers", "1"]
    command += ["--workflows", "20", "--chromium", str(chromium)]
    bench = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    app_pid = None
    try:
        assert bench.stderr is not None
        for line in bench.stderr:
            found = re.search(r"app served at \S+ \(pid (\d+)\)", line)
            if found:
                app_pid = int(found.group(1))
                break
        assert app_pid is not None, "the bench never said which app it served"
        app = psutil.Process(app_pid)
        bench.kill()  # the bench only: its process group (the app has its own session) lives on
        bench.wait(timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not app.is_running() or app.status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the app (pid {app_pid}) still runs 30 s after the bench was killed")
    finally:
        stop_process_group(bench)
        if app_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(app_pid, signal.SIGKILL)
        for pm in postmasters_under(tmp):
            with contextlib.suppress(psutil.Error):
                pm.kill()
        shutil.rmtree(tmp, ignore_errors=True)
