"""The batch evaluation (scripts/evaluate.py, smooth_eval) on a local Ray with two workers, each its
own ComfyUI server of the project's host, on the tiny checkpoint and tiny CLIP, TINY settings.

- a run of 3 clips (2 edits each, 2 arms) and 1 unreadable clip: every job runs once, the tune of
  a video and arm runs once and its other edits take it from ComfyUI's cache, the unreadable clip
  is in the table with its error, CLIP-T and CLIP-F are those of the JPGs written (the submission), the
  table, plots and page are written, the workers' servers and folders are gone afterwards;
- a second run of the same command does no work;
- Ctrl-C (SIGINT) in the middle of a run leaves only complete job folders and no server behind;
  the next run, with one worker killed (ray.kill) while it runs a job, finishes every job, the
  killed worker's jobs on another.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from make_sample_video import render_frames, write_video
from tiny_clip import save_tiny_clip

pytest.importorskip("ray")
REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from smooth_eval import dataset, report, runner  # noqa: E402
from smooth_core import loveu  # noqa: E402

pytestmark = pytest.mark.integration
ARMS = ("baseline", "smooth")
READABLE = {("a", "ball"): 21, ("a", "disc"): 22, ("b", "coin"): 23}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("eval_clip"))


def make_dataset(folder: pathlib.Path, broken: bool, videos: int = len(READABLE)) -> pathlib.Path:
    """A simple CSV: the first `videos` of three clips (two as mp4 files, one as a folder of JPG frames)
    with two edits each, and with `broken` one more clip whose file is not a video."""
    rows = []
    for (split, name), seed in list(READABLE.items())[:videos]:
        frames = render_frames(frames=6, size=96, seed=seed)
        if name == "disc":
            (folder / name).mkdir(parents=True)
            for index, frame in enumerate(frames):
                Image.fromarray(frame).save(folder / name / f"{index:05d}.jpg")
            video = name
        else:
            write_video(folder / f"{name}.mp4", frames)
            video = f"{name}.mp4"
        rows += [(video, f"a {name} moving", f"a red {name} moving", "red", split),
                 (video, f"a {name} moving", f"a {name} moving, watercolor", "style", split)]
    if broken:
        (folder / "broken.mp4").write_bytes(b"this is not a video" * 100)
        rows += [("broken.mp4", "a broken clip", "an edit", "red", "b"), ("broken.mp4", "a broken clip", "another", "style", "b")]
    table = folder / "prompts.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("video", "source_prompt", "edit_prompt", "edit", "split"))
        writer.writerows(rows)
    return table


def servers_of(out: pathlib.Path) -> list[str]:
    """The command lines of ComfyUI servers still running for this output folder's workers."""
    run_id = runner.run_id(out)
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                command = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "main.py" in command and f"/eval/{run_id}-" in command:
                found.append(command)
    return found


def wait_gone(out: pathlib.Path, seconds: float = 20.0) -> list[str]:
    deadline = time.time() + seconds
    while servers_of(out) and time.time() < deadline:
        time.sleep(0.5)
    return servers_of(out)


def check_complete(out: pathlib.Path) -> list[dict]:
    """Every job folder is whole (record, and for a done job its frames and video); nothing is being assembled."""
    assert not (out / ".tmp").exists()
    records = []
    for record_path in out.glob("*/*/*/*/record.json"):
        record = json.loads(record_path.read_text())
        folder = record_path.parent
        if record["status"] == "done":
            assert len(list(folder.glob("*.jpg"))) == record["frames"] == 4
            assert (folder / "video.mp4").stat().st_size > 0 and (folder / "loss.png").stat().st_size > 0
        records.append(record)
    for folder in out.glob("*/*/*/*"):
        if folder.is_dir() and not folder.name.startswith("."):
            assert (folder / "record.json").exists(), f"{folder} has no record"
    return records


def cli(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--settings", "tiny", "--arms", ",".join(ARMS), *args]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, clip_folder):
    data = tmp_path_factory.mktemp("eval_data")
    table = make_dataset(data, broken=True)
    out = tmp_path_factory.mktemp("eval_out")
    run = subprocess.run(cli("--videos", str(data), "--prompts", str(table), "--out", str(out), "--workers", "2",
                             "--clip", str(clip_folder)), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-6000:]
    return data, table, out, run


def test_every_job_runs_once_and_the_tune_is_shared(first_run):
    _, _, out, run = first_run
    records = check_complete(out)
    done = [r for r in records if r["status"] == "done"]
    assert len(records) == 16 and len(done) == 12
    assert all(r["attempts"] == 1 for r in records)
    assert "ran 16 job(s) (4 failed)" in run.stderr and "on 2 worker(s)" in run.stderr
    for (split, name) in READABLE:
        for arm in ARMS:
            group = [r for r in done if (r["split"], r["video"], r["arm"]) == (split, name, arm)]
            # one tune per video and arm: the first edit runs it, the second takes it from the cache
            assert sorted(r["tune_cached"] for r in group) == [False, True], group
    assert len({r["worker"] for r in done}) == 2  # both workers took jobs
    assert not wait_gone(out)  # the servers stopped with the run
    assert not list((REPO / ".host" / "eval").glob(f"{runner.run_id(out)}-*"))


def test_unreadable_clip_is_reported_while_the_rest_finish(first_run):
    _, _, out, _ = first_run
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16
    broken = [row for row in rows if row["video"] == "broken"]
    assert len(broken) == 4 and all(row["status"] == "failed" for row in broken)
    assert all("broken.mp4 cannot be read as a video" in row["error"] for row in broken)
    assert all(row["status"] == "done" for row in rows if row["video"] != "broken")
    summary = (out / "summary.md").read_text()
    assert "## a (2 videos)" in summary and "## b (2 videos)" in summary
    assert "| Tune-A-Video (`baseline`) |" in summary and "## Failed jobs" in summary and "broken.mp4" in summary


def test_clip_metrics_are_those_of_the_written_submission(first_run, clip_folder):
    _, _, out, _ = first_run
    clip = loveu.LoveuClip(clip_folder)
    records = [r for r in check_complete(out) if r["status"] == "done"]
    for record in records[:4]:
        folder = runner.job_folder(out, record["key"])
        # the arm's folder is a LOVEU submission: what the benchmark's script would score
        assert folder == out / record["arm"] / record["split"] / record["video"] / record["edit"]
        expected = loveu.score_video(clip, folder, record["edit_prompt"])
        assert record["clip_text"] == pytest.approx(expected["clip_text"], abs=1e-4)
        assert record["clip_frame"] == pytest.approx(expected["clip_frame"], abs=1e-6)
        assert -1.0 <= record["vl_score"] <= 1.0
    # the summary's cell is the mean over videos of each video's mean over its edits
    rows = report.collect(out, runner.plan(dataset.read_prompts(first_run[1], first_run[0]), runner.Options(out, ARMS, "tiny")))
    by_video: dict = {}
    for r in records:
        if r["arm"] == "smooth":
            by_video.setdefault((r["split"], r["video"]), []).append(r["vl_score"])
    means = [sum(v) / len(v) for v in by_video.values()]
    assert report.per_video(rows, "smooth", "vl_score") == pytest.approx(dict(zip(by_video, means)))


def test_report_files(first_run):
    _, _, out, _ = first_run
    for name in ("vl_per_video.png", "metrics.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 300
    page = (out / "index.html").read_text()
    for record in check_complete(out):
        if record["status"] == "done":
            assert f"{record['key']}/video.mp4" in page and (out / record["key"] / "video.mp4").exists()
    for split, name in READABLE:
        assert f"sources/{split}/{name}.mp4" in page and (out / "sources" / split / f"{name}.mp4").exists()


def test_a_second_run_does_no_work(first_run):
    data, table, out, _ = first_run
    before = {path: path.stat().st_mtime_ns for path in out.rglob("record.json")}
    run = subprocess.run(cli("--videos", str(data), "--prompts", str(table), "--out", str(out), "--workers", "2"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "all 16 jobs are done already" in run.stderr and "ran 0 job(s)" in run.stderr
    assert {path: path.stat().st_mtime_ns for path in out.rglob("record.json")} == before


def test_interrupt_then_a_killed_worker_lose_no_job(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    table = make_dataset(data, broken=False, videos=2)
    out = tmp_path / "out"
    # Ctrl-C after the first jobs: the run stops, what is written is whole, no server is left
    process = subprocess.Popen(cli("--videos", str(data), "--prompts", str(table), "--out", str(out), "--workers", "2"),
                               stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "2/8 jobs done" in line:
            process.send_signal(signal.SIGINT)
            break
    rest, _ = process.communicate(timeout=120)
    assert process.returncode == 130, "".join(lines) + (rest or "")
    first = check_complete(out)
    assert 2 <= len(first) < 8
    assert not wait_gone(out)

    # the same run again, in this process, killing one worker while it runs a job
    videos = dataset.read_prompts(table, data)
    killed = []

    def kill_once(record, pool):
        if not killed and pool.busy_slots():
            slot = min(pool.busy_slots())
            killed.append(pool.identities[slot])
            pool.kill(slot)

    summary = runner.evaluate(videos, runner.Options(out, ARMS, "tiny", workers=2), on_result=kill_once)
    records = check_complete(out)
    assert len(records) == 8 and all(r["status"] == "done" for r in records)
    assert summary["ran"] == 8 - len(first) and summary["failed"] == 0
    # the job the killed worker was running ran again; the jobs queued behind it are not charged an attempt
    assert killed and sum(r["attempts"] == 2 for r in records) == 1
    assert not wait_gone(out)  # the killed worker's server too: it dies with its worker


def test_a_worker_whose_server_dies_restarts_it_and_runs_the_job_again(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    table = make_dataset(data, broken=False, videos=1)
    out = tmp_path / "out"
    killed = []

    def kill_server_once(record, pool):
        if not killed and pool.busy_slots():  # the next job of the group is running: its server dies under it
            killed.append(pool.identities[0]["server_pid"])
            os.kill(killed[0], signal.SIGKILL)

    summary = runner.evaluate(dataset.read_prompts(table, data), runner.Options(out, ("baseline",), "tiny", workers=1),
                              on_result=kill_server_once)
    records = check_complete(out)
    assert killed and summary["failed"] == 0 and len(records) == 2
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in records)  # rerun by its own worker
    assert len({r["worker"] for r in records}) == 1
    assert not wait_gone(out)
