"""One evaluation worker: its own ComfyUI server of the project's host, one job at a time.

The Ray actor's body (`runner` wraps it with `ray.remote`). The server gets a base directory
of its own (input, output, user, temp) whose `models` is the shared models folder, so tuned
weights and tuning checkpoints in `models/smoothvideo/` are seen by every worker on the machine:
a tune cut short when a worker died resumes from its checkpoint on the next. The server runs on
the GPU Ray gave the actor (CUDA_VISIBLE_DEVICES), or with --cpu on a machine without one. Ray
kills a worker's child processes when the worker ends or is killed, so the server goes with it
(tests/integration/test_evaluate.py kills a worker with ray.kill and finds its server gone; with
Ray 2.60 the server also went within 0.5 s of a SIGKILL sent to the worker process from outside,
as a crash would end it).

Consecutive jobs of one video and tune differ only in the edit prompt (and the sampler), so
ComfyUI's execution cache keeps the tune and the inversion between them; each record says
whether its tune ran or came from the cache.
"""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import socket
import sys
import tempfile
import time

from . import arms, runner

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from comfy_host import HOST, ComfyError, ComfyServer  # noqa: E402

JOB_TIMEOUT = float(os.environ.get("SMOOTHVIDEO_EVAL_JOB_TIMEOUT", 6 * 3600))


class ServerLost(Exception):
    """The job's ComfyUI server died or stopped answering (not the job's own failure)."""


class Worker:
    def __init__(self, slot_dir: str, models_dir: str, gpu: bool, clip_folder: str | None, threads: int):
        self.dir = pathlib.Path(slot_dir)
        shutil.rmtree(self.dir, ignore_errors=True)  # what a killed worker of this slot left
        for folder in ("input", "output", "user", "temp", "custom_nodes"):
            (self.dir / folder).mkdir(parents=True)
        (self.dir / "models").symlink_to(pathlib.Path(models_dir).resolve(), target_is_directory=True)
        (self.dir / "custom_nodes" / "ComfyUI-SmoothVideo").symlink_to(REPO, target_is_directory=True)
        self.gpu = gpu
        self.threads = threads
        self.server = self._start_server()
        self.clip = None
        if clip_folder:
            from smooth_core import loveu

            self.clip = loveu.LoveuClip(clip_folder, device="cuda" if gpu else "cpu")

    def _start_server(self) -> ComfyServer:
        server = ComfyServer(HOST, base=self.dir, cpu=not self.gpu,
                             log_path=self.dir / "comfyui.log",
                             extra_env={"OMP_NUM_THREADS": str(self.threads)})
        return server.start()

    def identity(self) -> dict:
        return {"node": socket.gethostname(), "pid": os.getpid(), "server_pid": self.server.process.pid,
                "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", "") if self.gpu else "",
                "comfyui": self.server.version}

    def run(self, job: dict, source: bytes) -> dict:
        """Runs one job; returns its record and output files. A job that ComfyUI refuses or that fails,
        or whose scoring fails, is a record with status "failed" and the message. A server that dies or
        stops answering is restarted and the job run again here, once: the job stays with its group's
        worker, so no other worker tunes the same save_name meanwhile."""
        started = time.time()
        record = {**runner.job_fields(job),
                  "worker": f"{socket.gethostname()}:{os.getpid()}", "tune_id": job["save_name"]}
        try:
            for attempt in (1, 2):
                if self.server.process.poll() is not None:
                    self.server.stop()
                    self.server = self._start_server()
                try:
                    return self._run(job, source, record, started)
                except ServerLost as error:
                    self.server.stop()
                    if attempt == 2:
                        raise RuntimeError(f"the ComfyUI server died or stopped answering twice: {error}") from None
        except Exception as error:  # noqa: BLE001 -- every failure becomes the job's record, never the run's end
            self._forget_tune(job)
            return {"record": {**record, "status": "failed", "error": f"{type(error).__name__}: {error}"[:4000],
                               "seconds": time.time() - started}}

    def _run(self, job: dict, source: bytes, record: dict, started: float) -> dict:
        source_path = self.dir / "input" / job["source_file"]
        if not source_path.exists():
            source_path.write_bytes(source)
        prefix = f"eval/{job['key']}"
        graph = arms.job_graph(
            arms.ARMS[job["arm"]], arms.SETTINGS[job["settings"]], source_file=job["source_file"],
            video_frames=job["video_frames"], source_prompt=job["source_prompt"], edit_prompt=job["edit_prompt"],
            checkpoint=job["checkpoint"], save_name=job["save_name"], output_prefix=prefix,
        )
        try:
            record["comfyui"] = self.server.version
            entry = self.server.run(graph, timeout=JOB_TIMEOUT)
        except ComfyError:
            raise  # the job's own failure, as ComfyUI reports it: running it again would fail again
        except (RuntimeError, TimeoutError, OSError) as error:  # the server died or stopped answering
            raise ServerLost(str(error)[:2000]) from None
        try:
            return self._collect(entry, record, started, prefix)
        finally:
            shutil.rmtree(self.dir / "output" / prefix, ignore_errors=True)
            self._forget_tune(job)

    def _forget_tune(self, job: dict) -> None:
        """After the last job of a tune: its weights and checkpoint (hundreds of MB at SD1.5 size) go."""
        if job.get("forget_tune"):
            for suffix in (".safetensors", ".checkpoint.safetensors"):
                (self.dir / "models" / "smoothvideo" / (job["save_name"] + suffix)).unlink(missing_ok=True)

    def _collect(self, entry: dict, record: dict, started: float, prefix: str) -> dict:
        from PIL import Image

        outputs = entry["outputs"]
        cached = set()
        for kind, data in entry.get("status", {}).get("messages", []):
            if kind == "execution_cached":
                cached.update(data.get("nodes", []))
        frames = []
        for item in self._files(outputs, arms.FRAMES_NODE):
            with Image.open(item) as image:  # the decoded frames, lossless PNG
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="JPEG")  # the submission's JPG, Pillow's defaults
                frames.append(buffer.getvalue())
        scores = outputs.get(arms.NODE["vl_score"], {})
        record.update(
            status="done", error="", frames=len(frames), tune_cached=arms.NODE["tune"] in cached,
            vl_score=float(scores["vl_score"][0]), tune_log=" ".join(outputs.get(arms.NODE["tune"], {}).get("text", [])),
        )
        if self.clip is not None:
            from smooth_core import loveu

            with tempfile.TemporaryDirectory() as folder:
                for index, data in enumerate(frames):
                    (pathlib.Path(folder) / f"{index:05d}.jpg").write_bytes(data)
                record.update(loveu.score_video(self.clip, folder, record["edit_prompt"]))
        record["seconds"] = time.time() - started
        video, = self._files(outputs, arms.NODE["save_video"])
        source, = self._files(outputs, arms.SOURCE_SAVE_NODE)
        loss, = self._files(outputs, arms.NODE["loss_curve"])
        return {"record": record, "frames": frames, "video": video.read_bytes(), "source_video": source.read_bytes(),
                "loss_curve": loss.read_bytes()}

    def _files(self, outputs: dict, node_id: str) -> list[pathlib.Path]:
        items = outputs.get(node_id, {}).get("images", [])
        return [self.dir / item["type"] / item["subfolder"] / item["filename"] for item in items if item["type"] == "output"]

    def shutdown(self) -> None:
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
