"""Real clips with an audio track that PyAV cannot decode (as opencv's Megamind.avi, AC-3): the
stock Get Video Components decodes the audio too and stops; Select Video Frames takes Load
Video's VIDEO directly and reads the video stream alone."""

import fractions
import uuid

import av
import numpy as np
import pytest

from comfy_host import ComfyError, load_workflow, node_output
from make_sample_video import render_frames

pytestmark = pytest.mark.integration


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


def vl_prompt(file: str, direct: bool) -> dict:
    """vl_score on `file` at 8 frames of 80 px; `direct`: Load Video's VIDEO into Select Video Frames."""
    prompt = load_workflow("vl_score")
    prompt["1"]["inputs"]["file"] = file
    prompt["3"]["inputs"].update(count=8, width=80, height=80)
    if direct:
        del prompt["2"]
        del prompt["3"]["inputs"]["images"]
        prompt["3"]["inputs"]["video"] = ["1", 0]
    return prompt


def test_get_video_components_stops_on_the_undecodable_audio(server, clips):
    with pytest.raises(ComfyError, match=r"GetVideoComponents .*avcodec_send_packet"):
        server.run(vl_prompt(clips[0], direct=False))


def test_select_video_frames_reads_the_video_stream_of_such_a_clip(server, clips):
    direct = node_output(server.run(vl_prompt(clips[0], direct=True)), "5")
    assert direct["text"][0].startswith("VL score:") and "(8 frames" in direct["text"][0]
    # The same frames as through the stock nodes from a copy without the audio track.
    stock = node_output(server.run(vl_prompt(clips[1], direct=False)), "5")
    assert direct["vl_score"][0] == stock["vl_score"][0]


@pytest.mark.parametrize("connected", ["both", "neither"])
def test_select_video_frames_takes_images_or_video(server, sample_video, connected):
    prompt = vl_prompt(sample_video[0], direct=False)
    if connected == "both":
        prompt["3"]["inputs"]["video"] = ["1", 0]
    else:
        del prompt["3"]["inputs"]["images"]
        del prompt["2"]
    with pytest.raises(ComfyError, match=f"connect images .* or video .*, not {connected}"):
        server.run(prompt)
