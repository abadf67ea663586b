"""The arms an evaluation compares, its settings, and the API graph of one job.

Every arm is one of the pack's example workflows (`workflows/api/<name>.json`, the graph users
run), changed only where a dataset needs it: the source file, the frames, the two prompts, the
save name of the tune, and for the Eq. 5 arms the stock `ddim` sampler swapped for the Smooth
Noise Sampler. Two output nodes are added: the decoded frames as PNG (lossless, for the
LOVEU submission JPGs and the metrics) and the selected source frames as a video (for the report).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows" / "api"

# The node ids the Tune-A-Video and ControlVideo workflows share (a test checks them).
NODE = {
    "load": "1", "select": "3", "checkpoint": "4", "source_prompt": "6", "edit_prompt": "7",
    "tune": "10", "invert": "11", "sampler": "12", "scheduler": "13", "sample": "14", "decode": "15",
    "save_video": "17", "vl_score": "18", "loss_curve": "19",
}
FRAMES_NODE, SOURCE_VIDEO_NODE, SOURCE_SAVE_NODE = "90", "91", "92"


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    workflow: str  # a name in workflows/api/
    eq5: bool  # the Smooth Noise Sampler (Eq. 5, lambda3 = 0.5) instead of the stock ddim sampler
    family: str  # "tune_a_video" or "controlvideo": which paper settings apply
    label: str

    @property
    def tune_key(self) -> str:
        """Arms with the same tune_key share one tune per video (they differ only in sampling)."""
        return self.workflow


ARMS = {
    arm.name: arm for arm in (
        Arm("baseline", "tune_a_video_baseline", False, "tune_a_video", "Tune-A-Video"),
        Arm("smooth", "tune_a_video_smooth", False, "tune_a_video", "Tune-A-Video + smooth loss"),
        Arm("baseline_eq5", "tune_a_video_baseline", True, "tune_a_video", "Tune-A-Video + Eq. 5"),
        Arm("smooth_eq5", "tune_a_video_smooth", True, "tune_a_video", "Tune-A-Video + smooth loss + Eq. 5"),
        Arm("controlvideo_baseline", "controlvideo_baseline", False, "controlvideo", "ControlVideo"),
        Arm("controlvideo_smooth", "controlvideo_smooth", False, "controlvideo", "ControlVideo + smooth loss"),
        Arm("controlvideo_baseline_eq5", "controlvideo_baseline", True, "controlvideo", "ControlVideo + Eq. 5"),
        Arm("controlvideo_smooth_eq5", "controlvideo_smooth", True, "controlvideo", "ControlVideo + smooth loss + Eq. 5"),
    )
}
DEFAULT_ARMS = ("baseline", "smooth")
EQ5 = {"lambda1": 1000.0, "lambda3": 0.5, "start_percent": 0.0, "end_percent": 1.0}


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a video is turned into frames and tuned. `frames` 0 = every frame of the video."""

    name: str
    frames: dict  # family -> frame count (0: all)
    size: int
    steps: dict  # family -> tuning steps; None keeps the workflow's
    ddim_steps: int | None
    learning_rate: float | None
    checkpoint_every: int
    gradient_checkpointing: bool
    spread_frames: dict  # family -> True: frames spread over the clip (stride = len // count), else consecutive


SETTINGS = {
    # LOVEU-TGVE-2023's Tune-A-Video configs (every frame, 480x480, 500 steps at lr 3e-5, 50 DDIM
    # steps with inversion, seed 33, gradient checkpointing) with the paper's CFG 7.5 (the workflows');
    # ControlVideo's canny config (8 frames spread over the clip, 80 steps, CFG 12) at the dataset's 480 px.
    "paper": Settings("paper", {"tune_a_video": 0, "controlvideo": 8}, 480, {"tune_a_video": None, "controlvideo": None},
                      None, None, 100, True, {"tune_a_video": False, "controlvideo": True}),
    # scripts/quick_settings.py's QUICK and TINY: a CPU proves the pipeline in minutes.
    "quick": Settings("quick", {"tune_a_video": 6, "controlvideo": 6}, 96, {"tune_a_video": 10, "controlvideo": 10},
                      10, 1e-4, 5, False, {"tune_a_video": False, "controlvideo": False}),
    "tiny": Settings("tiny", {"tune_a_video": 4, "controlvideo": 4}, 80, {"tune_a_video": 4, "controlvideo": 4},
                     4, 1e-4, 2, False, {"tune_a_video": False, "controlvideo": False}),
}


def load_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def frame_selection(settings: Settings, arm: Arm, video_frames: int) -> dict:
    """Select Video Frames' start, count and stride for a video of `video_frames` frames."""
    wanted = settings.frames[arm.family]
    count = video_frames if wanted == 0 else min(wanted, video_frames)
    stride = max(video_frames // count, 1) if settings.spread_frames[arm.family] else 1
    return {"start": 0, "count": count, "stride": stride, "width": settings.size, "height": settings.size}


def job_graph(arm: Arm, settings: Settings, *, source_file: str, video_frames: int, source_prompt: str,
              edit_prompt: str, checkpoint: str, save_name: str, output_prefix: str) -> dict:
    """The API graph of one job: `arm`'s workflow on the source, with the edit prompt."""
    graph = copy.deepcopy(load_workflow(arm.workflow))
    inputs = lambda key: graph[NODE[key]]["inputs"]  # noqa: E731
    inputs("load")["file"] = source_file
    inputs("select").update(frame_selection(settings, arm, video_frames))
    inputs("checkpoint")["ckpt_name"] = checkpoint
    inputs("source_prompt")["text"] = source_prompt
    inputs("edit_prompt")["text"] = edit_prompt
    tune = inputs("tune")
    tune["save_name"] = save_name
    tune["checkpoint_every"] = settings.checkpoint_every
    tune["gradient_checkpointing"] = settings.gradient_checkpointing
    if settings.steps[arm.family] is not None:
        tune["steps"] = settings.steps[arm.family]
    if settings.learning_rate is not None:
        tune["learning_rate"] = settings.learning_rate
    if settings.ddim_steps is not None:
        inputs("invert")["steps"] = settings.ddim_steps
        inputs("scheduler")["steps"] = settings.ddim_steps
    if arm.eq5:
        graph[NODE["sampler"]] = {"class_type": "SmoothVideo_SmoothNoiseSampler", "inputs": dict(EQ5),
                                  "_meta": {"title": "Smooth Noise Sampler (Eq. 5)"}}
    inputs("save_video")["filename_prefix"] = f"{output_prefix}/video"
    graph[NODE["loss_curve"]]["inputs"]["filename_prefix"] = f"{output_prefix}/loss"
    graph[FRAMES_NODE] = {"class_type": "SaveImage", "inputs": {"images": [NODE["decode"], 0], "filename_prefix": f"{output_prefix}/frame"}}
    graph[SOURCE_VIDEO_NODE] = {"class_type": "CreateVideo", "inputs": {"images": [NODE["select"], 0], "fps": [NODE["select"], 1]}}
    graph[SOURCE_SAVE_NODE] = {"class_type": "SaveVideo", "inputs": {
        "video": [SOURCE_VIDEO_NODE, 0], "filename_prefix": f"{output_prefix}/source", "format": "mp4", "codec": "h264"}}
    return graph
