"""The batch evaluation's parts that need no server: prompt tables, sources, arms' graphs, the plan,
the job folders and the statistics of the summary (each against a hand-derived case)."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from smooth_eval import arms, dataset, report, runner

LOVEU_HEADER = ("Video name", "Our GT caption", "Style Change Caption", "Object Change Caption",
                "Background Change Caption", "Multiple Changes Caption")


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def frames_folder(folder, count=3, size=(24, 16), seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{index:05d}.jpg")
    return folder


def loveu_row(name, caption="src"):
    return (name, caption, f"{name} style", f"{name} object", f"{name} background", f"{name} multiple")


def test_loveu_table_rows_with_captions_are_videos_in_the_split_of_their_frames(tmp_path):
    for split, name in (("DAVIS_480p", "bmx-rider"), ("DAVIS_480p", "judo"), ("youtube_480p", "cat")):
        frames_folder(tmp_path / split / "480p_frames" / name)
    rows = [("DAVIS_480p", "", "", "", "", ""), loveu_row("bmx-rider", "A person does a trick."), loveu_row("judo"),
            ("", "", "", "", "", ""), ("youtube_480p", "", "", "", "", ""), loveu_row("cat")]
    table = write_csv(tmp_path / "LOVEU-TGVE-2023_Dataset.csv", LOVEU_HEADER, rows)
    videos = dataset.read_prompts(table, tmp_path)
    assert [(v.split, v.name) for v in videos] == [("DAVIS_480p", "bmx-rider"), ("DAVIS_480p", "judo"), ("youtube_480p", "cat")]
    first = videos[0]
    assert first.source == tmp_path / "DAVIS_480p" / "480p_frames" / "bmx-rider"
    assert first.source_prompt == "A person does a trick."
    # the benchmark's submission folder names, in its column order
    assert [(e.name, e.prompt) for e in first.edits] == [
        ("style", "bmx-rider style"), ("object", "bmx-rider object"),
        ("background", "bmx-rider background"), ("multiple", "bmx-rider multiple")]


def test_loveu_table_errors_name_the_row_and_the_fix(tmp_path):
    table = write_csv(tmp_path / "t.csv", LOVEU_HEADER, [loveu_row("missing-video")])
    with pytest.raises(dataset.DatasetError, match=r"t.csv line 2: no frames of 'missing-video' at .*/<split>/480p_frames/missing-video/"):
        dataset.read_prompts(table, tmp_path)
    frames_folder(tmp_path / "videvo_480p" / "480p_frames" / "lotus")
    row = list(loveu_row("lotus"))
    row[4] = ""
    table = write_csv(tmp_path / "t.csv", LOVEU_HEADER, [row])
    with pytest.raises(dataset.DatasetError, match="'lotus' has no background caption"):
        dataset.read_prompts(table, tmp_path)
    table = write_csv(tmp_path / "t.csv", ("clip", "prompt"), [("a", "b")])
    with pytest.raises(dataset.DatasetError, match="give the LOVEU-TGVE-2023 release's .* or a CSV with the columns video, source_prompt, edit_prompt"):
        dataset.read_prompts(table, tmp_path)


def test_simple_table_groups_edits_per_video(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "dog run.mp4").write_bytes(b"")
    frames_folder(tmp_path / "frames" / "cat")
    header = ("video", "source_prompt", "edit_prompt", "edit", "split")
    rows = [("clips/dog run.mp4", "a dog", "a cat", "", ""), ("frames/cat", "a cat", "a tiger", "tiger", "mine"),
            ("clips/dog run.mp4", "a dog", "a fox", "", ""), ("", "", "", "", "")]
    videos = dataset.read_prompts(write_csv(tmp_path / "p.csv", header, rows), tmp_path)
    assert [(v.split, v.name, [(e.name, e.prompt) for e in v.edits]) for v in videos] == [
        ("custom", "dog_run", [("edit1", "a cat"), ("edit2", "a fox")]),
        ("mine", "frames_cat", [("tiger", "a tiger")]),
    ]
    rows.append(("clips/dog run.mp4", "a dog", "a wolf", "edit1", ""))
    with pytest.raises(dataset.DatasetError, match="line 6: clips/dog run.mp4 has two edits named 'edit1'"):
        dataset.read_prompts(write_csv(tmp_path / "p.csv", header, rows), tmp_path)
    with pytest.raises(dataset.DatasetError, match="line 2: .*nowhere.mp4 does not exist"):
        dataset.read_prompts(write_csv(tmp_path / "p.csv", header, [("nowhere.mp4", "a", "b", "", "")]), tmp_path)
    with pytest.raises(dataset.DatasetError, match="line 2: source_prompt is empty"):
        dataset.read_prompts(write_csv(tmp_path / "p.csv", header, [("frames/cat", "", "b", "", "")]), tmp_path)


def test_a_folder_of_jpgs_becomes_a_lossless_video(tmp_path):
    import av

    folder = frames_folder(tmp_path / "v", count=4, size=(40, 24), seed=3)
    data, suffix, count = dataset.load_source(folder)
    assert (suffix, count) == (".mkv", 4)
    with av.open(io.BytesIO(data)) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    expected = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(folder.glob("*.jpg"))]
    assert len(decoded) == 4 and all((a == b).all() for a, b in zip(decoded, expected))


def test_unreadable_sources_are_refused_with_the_file(tmp_path):
    folder = frames_folder(tmp_path / "v")
    (folder / "00001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(dataset.DatasetError, match="00001.jpg cannot be read as an image"):
        dataset.load_source(folder)
    (tmp_path / "x.mp4").write_bytes(b"\0" * 500)
    with pytest.raises(dataset.DatasetError, match="x.mp4 cannot be read as a video"):
        dataset.load_source(tmp_path / "x.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(dataset.DatasetError, match="no \\*.jpg frames"):
        dataset.load_source(tmp_path / "empty")


EXPECTED_NODES = {"load": "LoadVideo", "select": "SmoothVideo_SelectVideoFrames",
                  "checkpoint": "CheckpointLoaderSimple", "source_prompt": "CLIPTextEncode", "edit_prompt": "CLIPTextEncode",
                  "tune": "SmoothVideo_OneShotTune", "invert": "SmoothVideo_DDIMInvertVideo", "sampler": "KSamplerSelect",
                  "scheduler": "BasicScheduler", "sample": "SamplerCustom", "decode": "VAEDecode", "save_video": "SaveVideo",
                  "vl_score": "SmoothVideo_VLScore", "loss_curve": "SaveImage"}


@pytest.mark.parametrize("workflow", sorted({arm.workflow for arm in arms.ARMS.values()}))
def test_every_arms_workflow_has_the_nodes_the_evaluation_changes(workflow):
    graph = arms.load_workflow(workflow)
    assert {key: graph[node]["class_type"] for key, node in arms.NODE.items()} == EXPECTED_NODES
    assert graph[arms.NODE["edit_prompt"]]["inputs"]["clip"] == [arms.NODE["checkpoint"], 1]
    assert graph[arms.NODE["sample"]]["inputs"]["sampler"] == [arms.NODE["sampler"], 0]


def test_an_eq5_arm_differs_from_its_twin_only_in_the_sampler():
    common = dict(source_file="s.mkv", video_frames=32, source_prompt="a", edit_prompt="b", checkpoint="c.safetensors",
                  save_name="eval_x", output_prefix="eval/k")
    plain = arms.job_graph(arms.ARMS["smooth"], arms.SETTINGS["paper"], **common)
    eq5 = arms.job_graph(arms.ARMS["smooth_eq5"], arms.SETTINGS["paper"], **common)
    assert {n for n in plain if plain[n] != eq5[n]} == {arms.NODE["sampler"]}
    assert eq5[arms.NODE["sampler"]] == {"class_type": "SmoothVideo_SmoothNoiseSampler", "inputs": arms.EQ5,
                                         "_meta": {"title": "Smooth Noise Sampler (Eq. 5)"}}
    # LOVEU's Tune-A-Video config: every frame at 480 px, 500 steps, 50 DDIM steps, gradient checkpointing
    assert plain[arms.NODE["select"]]["inputs"] == {
        "video": [arms.NODE["load"], 0], "start": 0, "count": 32, "stride": 1, "width": 480, "height": 480}
    tune = plain[arms.NODE["tune"]]["inputs"]
    assert (tune["steps"], tune["learning_rate"], tune["lambda2"], tune["seed"], tune["gradient_checkpointing"]) == (500, 3e-5, 0.2, 33, True)
    assert plain[arms.NODE["invert"]]["inputs"]["steps"] == plain[arms.NODE["scheduler"]]["inputs"]["steps"] == 50
    assert (plain[arms.NODE["load"]]["inputs"]["file"], plain[arms.NODE["edit_prompt"]]["inputs"]["text"]) == ("s.mkv", "b")


def test_frame_selection():
    paper, quick = arms.SETTINGS["paper"], arms.SETTINGS["quick"]
    tav, cv = arms.ARMS["baseline"], arms.ARMS["controlvideo_baseline"]
    assert arms.frame_selection(paper, tav, 128)["count"] == 128  # LOVEU's youtube clips: all 128 frames
    assert {k: arms.frame_selection(paper, cv, 32)[k] for k in ("count", "stride")} == {"count": 8, "stride": 4}
    assert {k: arms.frame_selection(quick, tav, 32)[k] for k in ("count", "stride", "width")} == {"count": 6, "stride": 1, "width": 96}
    assert arms.frame_selection(quick, tav, 4)["count"] == 4  # a clip shorter than the setting


def test_plan_groups_one_tune_per_video_and_keys_are_unique(tmp_path):
    videos = [dataset.Video("v1", "s", tmp_path / "v1", "src", (dataset.Edit("a", "pa"), dataset.Edit("b", "pb"))),
              dataset.Video("v2", "s", tmp_path / "v2", "src", (dataset.Edit("a", "pa"),))]
    groups = runner.plan(videos, runner.Options(tmp_path, ("baseline", "baseline_eq5", "smooth"), "quick"))
    shape = [(g[0]["video"], len({j["save_name"] for j in g}), sorted(j["key"] for j in g)) for g in groups]
    assert shape == [
        ("v1", 1, ["baseline/s/v1/a", "baseline/s/v1/b", "baseline_eq5/s/v1/a", "baseline_eq5/s/v1/b"]),
        ("v1", 1, ["smooth/s/v1/a", "smooth/s/v1/b"]),
        ("v2", 1, ["baseline/s/v2/a", "baseline_eq5/s/v2/a"]),
        ("v2", 1, ["smooth/s/v2/a"]),
    ]
    assert len({g[0]["save_name"] for g in groups}) == 4


def test_job_folders_are_written_whole_and_failed_ones_are_retried_on_request(tmp_path, monkeypatch):
    job = {"key": "baseline/s/v/a", "arm": "baseline", "split": "s", "video": "v", "edit": "a", "source_prompt": "x",
           "edit_prompt": "y", "attempts": 0}
    result = runner.failed(job, "boom")
    real_rename = runner.os.rename

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.write_job(tmp_path, result)
    assert not (tmp_path / job["key"]).exists()  # no folder of the job where the results are read
    monkeypatch.setattr(runner.os, "rename", real_rename)
    runner.write_job(tmp_path, result)
    assert json.loads((tmp_path / job["key"] / "record.json").read_text())["error"] == "boom"
    assert runner.is_done(tmp_path, job, retry_failed=False)
    assert not runner.is_done(tmp_path, job, retry_failed=True)


def test_mean_and_95_percent_interval_by_hand():
    mean, half = report.mean_interval([1.0, 2.0, 3.0, 4.0])
    # Student's t at 0.975 with 3 degrees of freedom: 3.182446305 (tables); sd = sqrt(5/3)
    assert mean == 2.5 and half == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2, rel=1e-8)
    assert math.isnan(report.mean_interval([0.7])[1]) and report.mean_interval([0.7])[0] == 0.7
    row = lambda arm, video, edit, x, status="done": {"arm": arm, "status": status, "split": "s", "video": video,  # noqa: E731
                                                      "edit": edit, "vl_score": x}
    rows = [row("a", "v1", "e1", 0.2), row("a", "v1", "e2", 0.4), row("a", "v2", "e1", 0.9), row("a", "v2", "e2", "", "failed")]
    assert report.per_video(rows, "a", "vl_score") == pytest.approx({("s", "v1"): 0.3, ("s", "v2"): 0.9})
    # paired: per video, the mean over the edits both arms finished of arm minus reference (v2: e1 only;
    # v3: the reference only), so a failed edit does not shift one side's average
    rows += [row("r", "v1", "e1", 0.1), row("r", "v1", "e2", 0.4), row("r", "v2", "e1", 0.5), row("r", "v2", "e2", 0.0),
             row("r", "v3", "e1", 0.1)]
    assert report.paired(rows, "a", "r", "vl_score") == pytest.approx([0.05, 0.4])


def test_a_rerun_with_other_settings_or_prompts_does_not_take_the_old_folders(tmp_path):
    runner.check_run(tmp_path, runner.Options(tmp_path, settings="quick"))
    runner.check_run(tmp_path, runner.Options(tmp_path, settings="quick"))  # the same: fine
    with pytest.raises(runner.EvaluationError, match="holds a run with settings 'quick' \\(now 'paper'\\): give another --out"):
        runner.check_run(tmp_path, runner.Options(tmp_path, settings="paper"))
    job = {"key": "baseline/s/v/a", "arm": "baseline", "split": "s", "video": "v", "edit": "a", "source_prompt": "x",
           "edit_prompt": "y", "attempts": 1}
    runner.write_job(tmp_path, {"record": {**job, "status": "done"}})
    assert runner.is_done(tmp_path, job, retry_failed=False)
    assert not runner.is_done(tmp_path, {**job, "edit_prompt": "another edit"}, retry_failed=False)


def test_a_video_listed_twice_is_refused(tmp_path):
    frames_folder(tmp_path / "DAVIS_480p" / "480p_frames" / "judo")
    table = write_csv(tmp_path / "t.csv", LOVEU_HEADER, [loveu_row("judo"), loveu_row("judo")])
    with pytest.raises(dataset.DatasetError, match="line 3: 'judo' is listed twice"):
        dataset.read_prompts(table, tmp_path)
