"""How the shipped workflows read a clip: Load Video's VIDEO into Select Video Frames, which decodes
the video stream alone (upright, within a trim, with its frame rate). Real clips with an audio
track that PyAV cannot decode (as opencv's Megamind.avi, AC-3) stop the stock Get Video
Components, which decodes the audio too; not this."""

import fractions
import json
import math
import pathlib
import struct
import uuid

import av
import numpy as np
import pytest
from PIL import Image

from comfy_host import ComfyError, load_workflow, node_output
from graphs import output_file, tiny_workflow
from make_sample_video import render_frames, write_video

pytestmark = pytest.mark.integration
REPO = pathlib.Path(__file__).resolve().parents[2]


def write_video_with_undecodable_audio(path, frames: np.ndarray, fps: int = 8) -> None:
    """A Matroska file: the frames as an MPEG-4 video stream, and an AC-3 audio stream whose packets
    are noise behind a valid sync word, so that decoding the audio fails as it does for such clips."""
    rng = np.random.default_rng(7)
    with av.open(str(path), "w", format="matroska") as out:
        video = out.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = out.add_stream("ac3", rate=48000)
        for n, frame in enumerate(frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
            packet = av.Packet(b"\x0b\x77" + rng.integers(0, 256, 1500, dtype=np.uint8).tobytes())
            packet.stream, packet.pts, packet.dts = audio, n * 1536, n * 1536
            packet.time_base = fractions.Fraction(1, 48000)
            out.mux(packet)
        for packet in video.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def clips(server):
    """(the clip with undecodable audio, a video-only copy of its video stream), in input/."""
    frames = render_frames(frames=8, size=96, seed=5)
    name = f"undecodable_audio_{uuid.uuid4().hex[:6]}"
    with_audio = f"{name}.mkv"
    write_video_with_undecodable_audio(server.base / "input" / with_audio, frames)
    video_only = f"{name}_video_only.mkv"
    with av.open(str(server.base / "input" / with_audio)) as source, \
            av.open(str(server.base / "input" / video_only), "w", format="matroska") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return with_audio, video_only


def vl_prompt(file: str, stock: bool = False) -> dict:
    """vl_score (as shipped: Load Video's VIDEO into Select Video Frames) on `file` at 8 frames of 80 px;
    `stock`: the frames through the stock Get Video Components instead."""
    prompt = load_workflow("vl_score")
    prompt["1"]["inputs"]["file"] = file
    prompt["3"]["inputs"].update(count=8, width=80, height=80)
    if stock:
        prompt["2"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}}
        del prompt["3"]["inputs"]["video"]
        prompt["3"]["inputs"]["images"] = ["2", 0]
    return prompt


def frames_prompt(file: str, video_source: list | None = None, **select) -> dict:
    """Select Video Frames on `file` (Load Video's VIDEO, or `video_source`), its frames saved as PNG and
    its fps into Create Video and Save Video."""
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": file}},
        "3": {"class_type": "SmoothVideo_SelectVideoFrames", "inputs": {
            "video": video_source or ["1", 0], "start": 0, "count": 0, "stride": 1, "width": 0, "height": 0, **select}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": f"test/frames_{uuid.uuid4().hex[:6]}"}},
        "5": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": ["3", 1]}},
        "6": {"class_type": "SaveVideo", "inputs": {"video": ["5", 0], "filename_prefix": f"test/video_{uuid.uuid4().hex[:6]}",
                                                    "format": "mp4", "codec": "h264"}},
    }


def saved_frames(server, entry, node_id="4") -> np.ndarray:
    return np.stack([np.asarray(Image.open(output_file(server, entry, node_id, index)).convert("RGB"))
                     for index in range(len(node_output(entry, node_id)["images"]))])


def saved_video_rate(server, entry, node_id="6") -> float:
    with av.open(str(output_file(server, entry, node_id))) as container:
        return float(container.streams.video[0].average_rate)


def reference_frames(path) -> np.ndarray:
    """Every frame of the file's first video stream, as PyAV decodes it to 8-bit RGB."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def assert_same_frames(ours: np.ndarray, theirs: np.ndarray, exact: bool) -> None:
    assert ours.shape == theirs.shape
    difference = np.abs(ours.astype(int) - theirs.astype(int))
    if exact:
        assert difference.max() == 0
    else:  # a frame turned the wrong way, or another frame, differs by tens of levels on average
        assert difference.mean() < 8.0, difference.mean()


def test_get_video_components_stops_on_the_undecodable_audio(server, clips):
    """Why the workflows do not route the clip through it."""
    with pytest.raises(ComfyError, match=r"GetVideoComponents .*avcodec_send_packet"):
        server.run(vl_prompt(clips[0], stock=True))


def test_select_video_frames_reads_the_video_stream_of_such_a_clip(server, clips):
    direct = node_output(server.run(vl_prompt(clips[0])), "5")
    assert direct["text"][0].startswith("VL score:") and "(8 frames" in direct["text"][0]
    # The frames are PyAV's decoding of the video stream, exactly, with the clip's frame rate.
    entry = server.run(frames_prompt(clips[0]))
    assert np.array_equal(saved_frames(server, entry), reference_frames(server.base / "input" / clips[1]))
    assert saved_video_rate(server, entry) == 8.0


def test_the_frames_are_those_of_get_video_components_on_a_clip_it_can_read(server, sample_video):
    """The stock node is the reference where it works: the same frames and the same frame rate. Up to
    0.17.2 it decodes to 8-bit RGB as the pack does, exactly. ComfyUI 0.33 converts most pixel formats
    to float RGB itself, with another chroma interpolation: 4.5 levels of 255 apart on average on this
    clip of sharp colour edges, and farther from the frames the clip was made from than the pack's
    reading (which stays one reading on every ComfyUI, so a workflow gets the same frames on each)."""
    entry = server.run(frames_prompt(sample_video[0]))
    stock = frames_prompt(sample_video[0])
    stock["2"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}}
    stock["4"]["inputs"]["images"] = ["2", 0]
    stock["5"]["inputs"] = {"images": ["2", 0], "fps": ["2", 2]}
    stock_entry = server.run(stock)
    ours, theirs = saved_frames(server, entry), saved_frames(server, stock_entry)
    assert ours.shape == theirs.shape == (12, 128, 128, 3)
    assert_same_frames(ours, theirs, exact=tuple(map(int, server.version.split("."))) < (0, 33, 0))
    made = sample_video[1].astype(int)  # the frames before encoding
    assert np.abs(ours.astype(int) - made).mean() <= np.abs(theirs.astype(int) - made).mean()
    assert saved_video_rate(server, entry) == saved_video_rate(server, stock_entry) == 8.0


def test_a_video_made_of_frames_gives_its_frames_as_they_are(server, sample_video):
    """Create Video's VIDEO holds frames, not a file: they come back unchanged (not encoded anew)."""
    prompt = frames_prompt(sample_video[0], width=64, height=64)
    prompt["7"] = {"class_type": "SmoothVideo_SelectVideoFrames", "inputs": {
        "video": ["5", 0], "start": 0, "count": 0, "stride": 1, "width": 0, "height": 0}}
    prompt["8"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": f"test/again_{uuid.uuid4().hex[:6]}"}}
    prompt["9"] = {"class_type": "CreateVideo", "inputs": {"images": ["7", 0], "fps": ["7", 1]}}
    prompt["6"]["inputs"]["video"] = ["9", 0]
    entry = server.run(prompt)
    assert np.array_equal(saved_frames(server, entry, "8"), saved_frames(server, entry, "4"))
    assert saved_video_rate(server, entry) == 8.0


def test_the_frame_rate_follows_the_stride(server, sample_video):
    entry = server.run(frames_prompt(sample_video[0], start=1, count=5, stride=2))
    reference = reference_frames(server.base / "input" / sample_video[0])
    assert np.array_equal(saved_frames(server, entry), reference[1:10:2])
    assert saved_video_rate(server, entry) == 4.0  # the 5 frames last as long as the 10 they came from


def test_a_trimmed_video_is_read_within_its_trim(server, sample_video):
    """ComfyUI's Trim Video (0.17 and later) keeps the file and a trim window, which the reading honours."""
    if "Video Slice" not in server.get("/object_info"):
        pytest.skip(f"ComfyUI {server.version} has no Trim Video node")
    prompt = frames_prompt(sample_video[0], video_source=["2", 0])
    prompt["2"] = {"class_type": "Video Slice", "inputs": {"video": ["1", 0], "start_time": 0.5, "duration": 0.75,
                                                           "strict_duration": True}}
    reference = reference_frames(server.base / "input" / sample_video[0])
    assert np.array_equal(saved_frames(server, server.run(prompt)), reference[4:10])  # 8 fps: frames 4 to 9


def rotated_copy(path, out) -> None:
    """A copy of an MP4 whose video track's matrix says "display turned by 90 degrees", as phones write it."""
    data = bytearray(path.read_bytes())
    tkhd = data.find(b"tkhd")
    assert data[tkhd + 4] == 0  # a version-0 track header: its matrix starts 40 bytes after the box type
    struct.pack_into(">9i", data, tkhd + 44, 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
    out.write_bytes(bytes(data))


def test_a_rotated_clip_is_read_upright(server):
    frames = render_frames(frames=4, size=96, seed=3)[:, :48]  # 48 x 96 px, taller than wide
    name = f"rotated_{uuid.uuid4().hex[:6]}"
    write_video(server.base / "input" / f"{name}_plain.mp4", frames, fps=8)
    rotated_copy(server.base / "input" / f"{name}_plain.mp4", server.base / "input" / f"{name}.mp4")
    with av.open(str(server.base / "input" / f"{name}.mp4")) as container:
        assert next(container.decode(video=0)).rotation == -90  # what the file says, as FFmpeg reads it
    upright = saved_frames(server, server.run(frames_prompt(f"{name}.mp4")))
    plain = reference_frames(server.base / "input" / f"{name}_plain.mp4")
    assert upright.shape == (4, 96, 48, 3)
    assert np.array_equal(upright, np.rot90(plain, k=-1, axes=(1, 2)))  # -90: a quarter turn clockwise
    if tuple(map(int, server.version.split("."))) >= (0, 33, 0):  # whose Get Video Components turns frames too
        stock = frames_prompt(f"{name}.mp4")
        stock["2"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}}
        stock["4"]["inputs"]["images"] = ["2", 0]
        theirs = saved_frames(server, server.run({k: stock[k] for k in ("1", "2", "4")}))
        assert_same_frames(upright, theirs, exact=False)


def test_every_shipped_workflow_reads_its_clip_through_select_video_frames():
    """No shipped workflow decodes a clip's audio: each Load Video feeds Select Video Frames' video
    input only, and no Get Video Components is left (API and UI files alike)."""
    for path in sorted((REPO / "workflows" / "api").glob("*.json")):
        graph = json.loads(path.read_text())
        loads = {node_id for node_id, node in graph.items() if node["class_type"] == "LoadVideo"}
        assert loads and not [n for n in graph.values() if n["class_type"] == "GetVideoComponents"], path.name
        readers = [(node["class_type"], name) for node in graph.values() for name, value in node["inputs"].items()
                   if isinstance(value, list) and value[0] in loads]
        assert readers and set(readers) == {("SmoothVideo_SelectVideoFrames", "video")}, (path.name, readers)
        ui = json.loads((REPO / "workflows" / path.name).read_text())
        assert not [n for n in ui["nodes"] if n["type"] == "GetVideoComponents"], path.name


@pytest.mark.parametrize("workflow", ["vl_score", "tune_a_video_smooth"])
def test_a_workflow_runs_on_a_clip_with_undecodable_audio(server, clips, workflow):
    prompt = tiny_workflow(workflow, clips[0])
    for node in prompt.values():
        if node["class_type"] == "SmoothVideo_OneShotTune":
            node["inputs"]["save_name"] += f"_audio_{uuid.uuid4().hex[:6]}"
    entry = server.run(prompt)
    scores = [output["vl_score"][0] for node_id in prompt if "vl_score" in (output := node_output(entry, node_id) or {})]
    assert scores and all(math.isfinite(score) for score in scores)


@pytest.mark.parametrize("connected", ["both", "neither"])
def test_select_video_frames_takes_images_or_video(server, sample_video, connected):
    prompt = vl_prompt(sample_video[0], stock=True)
    if connected == "both":
        prompt["3"]["inputs"]["video"] = ["1", 0]
    else:
        del prompt["3"]["inputs"]["images"]
        del prompt["2"]
    with pytest.raises(ComfyError, match=f"connect images .* or video .*, not {connected}"):
        server.run(prompt)
