"""The recovery SLA report end to end: a real job under snapback-launch, a
rank SIGKILLed at a known step, then the report as JSON (snapbackctl), as an
HTML file and as the live page of the coordinator's HTTP port, both loaded
in headless Chromium (Debian's chromium): a screenshot, no console message
at all (the page has no scripts: anything Chromium logs is an error, such as
an invalid SVG attribute), and the charts' elements and numbers checked
against the JSON and against what the test did.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from typing import Dict, List, Optional, Tuple

import pytest

from conftest import Server, bin_dir

CHROMIUM = shutil.which("chromium")


def ctl(endpoint: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(bin_dir(), "snapbackctl"), "--endpoint", endpoint,
                           "--timeout", "30s", *args], capture_output=True, text=True,
                          timeout=120)


def read_progress(progress: str, rank: int) -> Optional[Tuple[int, int, int]]:
    """(pid, incarnation, step) of a demo rank, or None before it runs."""
    try:
        with open(os.path.join(progress, f"rank{rank}")) as f:
            pid, inc, step = (int(x) for x in f.read().split())
            return pid, inc, step
    except (FileNotFoundError, ValueError):
        return None


def wait_progress(progress: str, rank: int, inc: int, step: int,
                  launch: subprocess.Popen, timeout: float = 120) -> Tuple[int, int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = read_progress(progress, rank)
        if p is not None and (p[1] > inc or (p[1] == inc and p[2] >= step)):
            return p
        assert launch.poll() is None, "the job ended early"
        time.sleep(0.02)  # polling a file the rank rewrites; bounded by the deadline
    raise AssertionError(f"rank {rank} did not reach step {step}")


class Dom(HTMLParser):
    """The elements of a page: (tag, attrs, text) in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: List[Tuple[str, Dict[str, str]]] = []
        self.text_by_id: Dict[str, str] = {}
        self._open_ids: List[Optional[str]] = []

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        self.elements.append((tag, a))
        self._open_ids.append(a.get("id"))
        if a.get("id"):
            self.text_by_id[a["id"]] = ""

    def handle_endtag(self, tag):
        if self._open_ids:
            self._open_ids.pop()

    def handle_data(self, data):
        for i in self._open_ids:
            if i:
                self.text_by_id[i] += data

    def count(self, tag: str, **want: str) -> int:
        return sum(1 for t, a in self.elements
                   if t == tag and all(a.get(k.replace("_", "-")) == v or
                                       (k == "cls" and v in a.get("class", "").split())
                                       for k, v in want.items()))


def chromium(url: str, out_dir: str, name: str) -> Dom:
    """Loads `url` in headless Chromium twice: the DOM after load, and a
    screenshot. Fails on any console message."""
    base = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--enable-logging=stderr", "--v=0", "--window-size=1000,2600",
            f"--user-data-dir={out_dir}/chromium-profile-{name}"]
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, f"console messages on {url}: {console}"
    png = os.path.join(out_dir, f"{name}.png")
    shot = subprocess.run(base + [f"--screenshot={png}", url], capture_output=True, text=True,
                          timeout=120)
    assert shot.returncode == 0, shot.stderr[-2000:]
    with open(png, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n", f"no screenshot of {url}"
    assert os.path.getsize(png) > 20_000, "the screenshot is (nearly) blank"
    parsed = Dom()
    parsed.feed(dom.stdout)
    return parsed


def check_page(dom: Dom, report: dict) -> None:
    """The charts hold what the JSON says."""
    incidents = report["incidents"]
    for chart in ("timeline", "mttr-dist", "lost-dist", "goodput", "lag"):
        assert dom.count("svg", id=chart) == 1, chart
    assert dom.count("g", cls="incident") == len(incidents)
    assert dom.count("g", cls="incident", data_kind="crash") == 1
    assert dom.count("tr", cls="incident-row") == len(incidents)
    # Every phase of a closed incident has its bar on the timeline.
    for phase in ("phase-detect", "phase-restart", "phase-restore", "phase-lost"):
        assert dom.count("rect", cls=phase) >= 1, phase
    assert dom.count("polyline", cls="series") == 2
    assert dom.count("script") == 0
    # The numbers on the cards are the JSON's.
    assert dom.text_by_id["goodput-value"].strip() == f"{100 * report['goodput']:.1f} %"
    assert dom.text_by_id["incidents-value"].strip() == str(len(incidents))
    # Histogram bars count every closed incident once.
    bars = [int(a["data-count"]) for t, a in dom.elements
            if t == "rect" and "bar" in a.get("class", "").split()]
    assert sum(bars) == 2 * report["mttr_seconds"]["count"]  # mttr-dist + lost-dist


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (./dev deps)")
def test_report_of_a_killed_rank_is_exact_and_renders_in_chromium(tmp_path):
    d = str(tmp_path)
    http_ready = os.path.join(d, "http.ready")
    server = Server(d, "--keep-last", "0", "--http-listen", "127.0.0.1:0",
                    "--http-ready-file", http_ready)
    try:
        with open(http_ready) as f:
            http_port = int(f.read().strip())
        progress = os.path.join(d, "progress")
        os.mkdir(progress)
        job = "report-e2e"
        launch = subprocess.Popen(
            [os.path.join(bin_dir(), "snapback-launch"), "--job", job, "--nproc", "1",
             "--endpoint", server.endpoint, "--",
             os.path.join(bin_dir(), "snapback-demo-job"), "--steps", "50", "--save-every",
             "10", "--mib", "1", "--step-ms", "100", "--progress-dir", progress],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pid, _, _ = wait_progress(progress, 0, 1, 25, launch)
        # Freeze it, read the step it reached, then kill it: the report must
        # know that step (it was sent at once, not with the next heartbeat).
        t_stop = time.time()
        os.kill(pid, signal.SIGSTOP)
        _, _, reached = read_progress(progress, 0)
        os.kill(pid, signal.SIGKILL)
        t_kill = time.time()
        out, _ = launch.communicate(timeout=180)
        assert launch.returncode == 0, out[-3000:]
        print(out[-3000:])  # shown when a later check fails
        restored = [int(line.split()[1]) for line in out.splitlines()
                    if line.startswith("restored ")]
        assert restored == [20], out[-3000:]

        r = ctl(server.endpoint, "report", job, "--json")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["state"] == "FINISHED"
        assert len(report["incidents"]) == 1
        inc = report["incidents"][0]
        assert inc["kind"] == "crash" and inc["closed"]
        assert int(inc["restored_step"]) == 20
        # The rank may have been stopped between reporting step N and
        # writing N to its progress file: the report then knows one more.
        assert reached <= int(inc["step_at_fault"]) <= reached + 1, (reached, inc)
        assert int(inc["lost_steps"]) == int(inc["step_at_fault"]) - 20
        assert report["lost_steps_exact"]
        # The fault is when the test stopped and killed the rank (the
        # coordinator's clock is this machine's).
        fault = int(inc["fault_unix_ms"]) / 1000
        assert t_stop - 1.5 <= fault <= t_kill + 0.5, (t_stop, t_kill, inc)
        # Lost time: from when training moved on from step 20 (its save's
        # Begin plus the save's stall, in the commit log) to the fault.
        ckpts = json.loads(ctl(server.endpoint, "checkpoints", job, "--json").stdout)
        step20 = [c for c in ckpts["checkpoints"] if int(c["step"]) == 20][0]
        moved_on = int(step20["created_unix_ms"]) + int(step20["max_blocked_us"]) // 1000
        assert int(inc["restored_step_saved_unix_ms"]) == moved_on
        assert int(inc["restored_step_committed_unix_ms"]) == int(step20["committed_unix_ms"])
        assert inc["lost_seconds"] == pytest.approx((int(inc["fault_unix_ms"]) - moved_on) / 1000)
        # Steps take at least 100 ms: the lost time covers the lost steps'
        # compute, and not much more (a step is 100 ms plus a little).
        lost = int(inc["lost_steps"])
        assert 0.1 * lost - 0.1 <= inc["lost_seconds"] <= 0.2 * lost + 0.5, inc
        order = ["fault_unix_ms", "detected_unix_ms", "ranks_back_unix_ms", "restored_unix_ms",
                 "first_new_step_unix_ms"]
        times = [int(inc[k]) for k in order]
        assert times == sorted(times) and times[0] > 0, inc
        # The badput buckets and productive time add up to the wall time.
        bad = sum(report["badput"].values())
        assert bad + report["productive_seconds"] == pytest.approx(report["wall_seconds"])
        assert 0 < report["goodput"] < 1
        assert report["badput"]["wasted_progress_from_disruption"] > 0
        assert report["badput"]["infrastructure_recovery_from_disruption"] > 0
        assert report["badput"]["unproductive_checkpoint_save_time"] > 0
        assert report["checkpoints_committed"] == 5, report  # 10, 20; then 30, 40, 50
        assert report["mttr_seconds"]["count"] == 1

        md = ctl(server.endpoint, "report", job)
        assert md.returncode == 0 and "# Recovery SLA report: job report-e2e" in md.stdout

        html = os.path.join(d, "report.html")
        r = ctl(server.endpoint, "report", job, "--html", html)
        assert r.returncode == 0, r.stderr
        check_page(chromium("file://" + html, d, "file"), report)
        live_url = f"http://127.0.0.1:{http_port}/report?job={job}"
        check_page(chromium(live_url, d, "live"), report)
        with urllib.request.urlopen(live_url + "&format=json", timeout=30) as resp:
            live = json.loads(resp.read())
        assert live["incidents"][0]["step_at_fault"] == inc["step_at_fault"]

        # A window that cannot be: one clear refusal, no crash.
        for query in ("&to=9000000000000000000", "&from=5&to=4", "&to=soon", "&format=pdf"):
            try:
                urllib.request.urlopen(live_url + query, timeout=30)
                raise AssertionError(f"{query} was accepted")
            except urllib.error.HTTPError as e:
                assert e.code == 400, (query, e.code)
                assert e.read().decode().strip(), query
        bad = ctl(server.endpoint, "report", "no-such-job")
        assert bad.returncode == 4 and len(bad.stderr.strip().splitlines()) == 1
    finally:
        server.stop()
