"""The driver of a batch evaluation: the jobs, what is done already, the scheduling on Ray, the outputs.

A job is (video, arm, edit). The jobs of one video whose arms share a tune (an arm and its
Eq. 5 twin) form a group that one worker runs in a row, so the tune runs once and ComfyUI's
cache keeps it for the other prompts. Groups go to idle workers, one per GPU (or per CPU slot);
Ray places them (a local Ray on this machine, or the cluster at --address).

Every finished job is written by this process under `out/<arm>/<split>/<video>/<edit>/`: the
frames as LOVEU submission JPGs (so `out/<arm>/` is a submission the benchmark's script reads),
`video.mp4`, `loss.png` and `record.json`. The folder is assembled under `out/.tmp/` and renamed
into place whole, so it exists complete or not at all; a job is done when its folder exists.
A re-run skips done jobs (failed ones too, unless --retry-failed); `out/run.json` holds the
settings and checkpoint, and a re-run with others is refused. A worker that dies (killed, its
node lost) has its unfinished jobs put back at the front of the queue for another worker; a job
is given up after MAX_ATTEMPTS workers died running it. A worker whose server dies restarts it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import signal
import sys
import time
import uuid
from collections import OrderedDict, deque
from typing import Callable

from . import arms, dataset

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_ATTEMPTS = 3
SOURCES_KEPT = 4
WORKER_START_TIMEOUT = 900  # seconds for a worker's ComfyUI server to answer
NOT_STARTED = {"not started": True}  # Pool.wait's mark of a job a dead worker had not begun


class EvaluationError(RuntimeError):
    """The evaluation cannot go on (a worker cannot start its server): the message says why."""
RECORD = "record.json"


@dataclasses.dataclass
class Options:
    out: pathlib.Path
    arms: tuple[str, ...] = arms.DEFAULT_ARMS
    settings: str = "quick"
    checkpoint: str = "smoothvideo_tiny_sd15.safetensors"
    clip: pathlib.Path | None = None  # a transformers CLIP folder (CLIP-T, CLIP-F); None: the VL score only
    workers: int | None = None  # None: one per GPU, or 1 on a machine without one
    address: str | None = None  # None: a local Ray on this machine
    models: pathlib.Path | None = None  # ComfyUI's models folder; None: the project host's
    retry_failed: bool = False
    keep_tunes: bool = False


def job_key(arm: str, video: dataset.Video, edit: dataset.Edit) -> str:
    return f"{arm}/{video.split}/{video.name}/{dataset.safe_name(edit.name)}"


def run_id(out: pathlib.Path) -> str:
    """Names the workers' folders (.host/eval/<run_id>-<slot>.<generation>) of the run writing to `out`."""
    return hashlib.sha256(str(pathlib.Path(out).resolve()).encode()).hexdigest()[:8]


def write_atomically(path: pathlib.Path, data: str | bytes) -> None:
    """Writes a file beside its final name, then renames it there: it exists whole or not at all."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_bytes(data.encode() if isinstance(data, str) else data)
    temporary.replace(path)


def job_fields(job: dict) -> dict:
    """What a job's record says of the job itself."""
    return {k: job[k] for k in ("key", "arm", "split", "video", "edit", "source_prompt", "edit_prompt")}


def job_folder(out: pathlib.Path, key: str) -> pathlib.Path:
    return out / key


def plan(videos: list[dataset.Video], options: Options) -> list[list[dict]]:
    """The groups of jobs, in the table's order; each group is one video and one tune."""
    groups: dict[tuple, list[dict]] = {}
    for video in videos:
        for edit in video.edits:
            for name in options.arms:
                arm = arms.ARMS[name]
                tune_id = hashlib.sha256(json.dumps(
                    [video.split, video.name, str(video.source), video.source_prompt, arm.tune_key, options.settings,
                     options.checkpoint, str(pathlib.Path(options.out).resolve())]).encode()).hexdigest()[:12]
                groups.setdefault((video.split, video.name, arm.tune_key), []).append({
                    "key": job_key(name, video, edit), "arm": name, "split": video.split, "video": video.name,
                    "edit": dataset.safe_name(edit.name), "source_prompt": video.source_prompt, "edit_prompt": edit.prompt,
                    "settings": options.settings, "checkpoint": options.checkpoint, "save_name": f"eval_{tune_id}",
                    "source": str(video.source), "attempts": 0,
                })
    return list(groups.values())


def is_done(out: pathlib.Path, job: dict, retry_failed: bool) -> bool:
    """The job has a folder from a run of the same prompts (and, with retry_failed, it succeeded)."""
    path = job_folder(out, job["key"]) / RECORD
    if not path.exists():
        return False
    record = json.loads(path.read_text())
    if (record.get("source_prompt"), record.get("edit_prompt")) != (job["source_prompt"], job["edit_prompt"]):
        return False  # the prompt table changed: this folder is of another edit
    return not (retry_failed and record.get("status") != "done")


def check_run(out: pathlib.Path, options: Options) -> None:
    """Writes out/run.json on the first run; refuses a re-run whose settings or checkpoint differ
    from it (its done jobs would be skipped and reported under the new settings)."""
    path = out / "run.json"
    described = {"settings": options.settings, "checkpoint": options.checkpoint}
    if path.exists():
        before = json.loads(path.read_text())
        changed = [f"{key} {before.get(key)!r} (now {value!r})" for key, value in described.items() if before.get(key) != value]
        if changed:
            raise EvaluationError(f"{out} holds a run with {', '.join(changed)}: give another --out, or the same settings")
        return
    write_atomically(path, json.dumps(described, indent=2) + "\n")


def write_job(out: pathlib.Path, result: dict) -> dict:
    """Writes one finished job's folder atomically (assembled in out/.tmp, then renamed); returns its record."""
    record = result["record"]
    staging = out / ".tmp" / uuid.uuid4().hex
    staging.mkdir(parents=True)
    for index, data in enumerate(result.get("frames", [])):
        (staging / f"{index:05d}.jpg").write_bytes(data)
    for name, field in (("video.mp4", "video"), ("loss.png", "loss_curve")):
        if result.get(field):
            (staging / name).write_bytes(result[field])
    (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    final = job_folder(out, record["key"])
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # a failed job being retried
        shutil.rmtree(final)
    os.rename(staging, final)
    if result.get("source_video"):
        source = out / "sources" / record["split"] / f"{record['video']}.mp4"
        if not source.exists():
            source.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(source, result["source_video"])
    return record


def failed(job: dict, error: str) -> dict:
    return {"record": {**job_fields(job),
                       "status": "failed", "error": error, "seconds": 0.0, "attempts": job["attempts"]}}


class Progress:
    """Jobs done / total and an ETA from the mean time per finished job, one line each."""

    def __init__(self, total: int, skipped: int, stream=sys.stderr):
        self.total, self.done, self.failed, self.started = total, skipped, 0, time.time()
        self.skipped = skipped
        self.stream = stream

    def finished(self, record: dict) -> None:
        self.done += 1
        self.failed += record["status"] != "done"
        ran = self.done - self.skipped
        left = self.total - self.done
        eta = (time.time() - self.started) / ran * left if ran else 0.0
        note = f" FAILED: {record['error'][:200]}" if record["status"] != "done" else ""
        print(f"evaluate: {self.done}/{self.total} jobs done ({self.failed} failed), ETA {format_seconds(eta)}"
              f" | {record['key']}{note}", file=self.stream, flush=True)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def evaluate(videos: list[dataset.Video], options: Options,
             on_result: Callable[[dict, "Pool"], None] | None = None) -> dict:
    """Runs every job not done yet; returns {"ran", "skipped", "failed", "seconds", "workers"}.
    `on_result(record, pool)` is called after each job is written (the tests kill a worker from it)."""
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / ".tmp", ignore_errors=True)  # what an interrupted run was assembling
    check_run(out, options)
    groups = plan(videos, options)
    total = sum(len(group) for group in groups)
    todo = [[job for job in group if not is_done(out, job, options.retry_failed)] for group in groups]
    todo = [group for group in todo if group]
    remaining = sum(len(group) for group in todo)
    progress = Progress(total, total - remaining)
    summary = {"ran": 0, "skipped": total - remaining, "failed": 0, "seconds": 0.0, "workers": 0}
    if not todo:
        print(f"evaluate: all {total} jobs are done already in {out}", file=sys.stderr)
        return summary
    started = time.time()
    sources = {video.name + "\0" + video.split: video for video in videos}
    pool = Pool(options, out)
    previous_handler = None
    try:
        summary["workers"] = pool.start()
        previous_handler = interrupt_on_sigterm()  # after ray.init, which installs its own SIGTERM handler
        print(f"evaluate: {remaining} of {total} jobs to run on {summary['workers']} worker(s)", file=sys.stderr, flush=True)
        queue = deque(todo)
        while queue or pool.busy():
            while queue and pool.idle_slot() is not None:
                group = queue.popleft()
                video = sources[group[0]["video"] + "\0" + group[0]["split"]]
                try:
                    source = pool.source(video)
                except dataset.DatasetError as error:
                    for job in group:  # the source could not be read here: one attempt, no worker
                        record = write_job(out, failed({**job, "attempts": 1}, str(error)))
                        summary["ran"] += 1
                        summary["failed"] += 1
                        progress.finished(record)
                    continue
                pool.submit(group, source)
            if not pool.busy():  # the last groups' sources could not be read: nothing is running
                continue
            retry = []
            for job, result in pool.wait():
                if result is NOT_STARTED:  # queued behind the job of a worker that died
                    retry.append(job)
                    continue
                if result is None:  # the worker died running it
                    job["attempts"] += 1
                    if job["attempts"] < MAX_ATTEMPTS:
                        retry.append(job)
                        continue
                    result = failed(job, f"given up after {job['attempts']} workers died running it")
                else:
                    result["record"]["attempts"] = job["attempts"] + 1
                record = write_job(out, result)
                summary["ran"] += 1
                summary["failed"] += record["status"] != "done"
                progress.finished(record)
                if on_result:
                    on_result(record, pool)
            queue.extendleft([job] for job in reversed(retry))  # at the front, in their order
            queue = merge_retries(queue)
    finally:
        pool.stop()
        shutil.rmtree(out / ".tmp", ignore_errors=True)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    summary["seconds"] = time.time() - started
    return summary


def merge_retries(queue: deque) -> deque:
    """Jobs put back one by one after a worker died, joined again into their groups (one tune each)."""
    merged: dict[tuple, list[dict]] = {}
    for group in queue:
        merged.setdefault((group[0]["split"], group[0]["video"], group[0]["save_name"]), []).extend(group)
    return deque(merged.values())


class Pool:
    """The Ray workers: one per GPU (or CPU slot), each its own ComfyUI server; a dead one is replaced."""

    def __init__(self, options: Options, out: pathlib.Path):
        self.options = options
        self.out = out
        self.actors: list = []
        self.running: dict = {}  # ObjectRef -> (slot, job, submission order)
        self.submitted = 0
        self.generation = 0
        self.started_ray = False
        self.sources: OrderedDict = OrderedDict()

    def start(self) -> int:
        import ray

        env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        if self.options.address:
            ray.init(address=self.options.address, runtime_env={"env_vars": env}, include_dashboard=False,
                     log_to_driver=False)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray for this process alone
            ray.init(address="local", runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=False,
                     object_store_memory=512 * 1024 * 1024)
        self.started_ray = True
        resources = ray.cluster_resources()
        self.gpu = resources.get("GPU", 0) >= 1
        count = self.options.workers or (int(resources.get("GPU", 0)) or 1)
        kind, available = ("GPU", int(resources.get("GPU", 0))) if self.gpu else ("CPU", int(resources.get("CPU", 1)))
        if count > available:
            raise EvaluationError(f"--workers {count}: Ray has {available} {kind}(s) for one worker each; give --workers {available} or fewer")
        self.threads = 1 if self.gpu else max(int(resources.get("CPU", 1)) // count, 1)
        self.run_id = run_id(self.out)
        models = self.options.models or (REPO / ".host" / "base" / "models")
        self.models = str(pathlib.Path(models).resolve())
        self.actors = [self._new_actor(slot) for slot in range(count)]
        try:
            self.identities = ray.get([actor.identity.remote() for actor in self.actors], timeout=WORKER_START_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise EvaluationError(f"the workers did not start within {WORKER_START_TIMEOUT} s: see `ray status` for "
                                  "resources Ray cannot give them") from None
        except ray.exceptions.RayActorError as error:
            raise EvaluationError(f"a worker could not start its ComfyUI server (its log is in "
                                  f"{REPO / '.host' / 'eval'}/{self.run_id}-*/comfyui.log): {error}") from None
        return count

    def _new_actor(self, slot: int):
        import ray

        from .worker import Worker

        self.generation += 1
        resources = {"num_gpus": 1} if self.gpu else {"num_cpus": self.threads}
        slot_dir = REPO / ".host" / "eval" / f"{self.run_id}-{slot}.{self.generation}"
        clip = str(self.options.clip.resolve()) if self.options.clip else None
        return ray.remote(Worker).options(**resources, max_restarts=0).remote(
            str(slot_dir), self.models, self.gpu, clip, self.threads)

    def source(self, video: dataset.Video):
        """The video's source as a Ray object: (ref, file name, frame count). The last few videos' are
        kept (an arm and the next share a video); older ones are read again if needed, so the object
        store holds a few videos, not the dataset (a 128-frame LOVEU clip is tens of MB)."""
        import ray

        key = (video.split, video.name)
        if key in self.sources:
            self.sources.move_to_end(key)
        else:
            data, suffix, frames = dataset.load_source(video.source)
            digest = hashlib.sha256(data).hexdigest()[:16]
            self.sources[key] = (ray.put(data), f"smoothvideo_eval_{digest}{suffix}", frames)
            while len(self.sources) > SOURCES_KEPT:
                self.sources.popitem(last=False)
        return self.sources[key]

    def idle_slot(self) -> int | None:
        busy = self.busy_slots()
        return next((slot for slot in range(len(self.actors)) if slot not in busy), None)

    def busy(self) -> bool:
        return bool(self.running)

    def submit(self, group: list[dict], source) -> None:
        ref, name, frames = source
        slot = self.idle_slot()
        for index, job in enumerate(group):
            job = {**job, "source_file": name, "video_frames": frames,
                   "forget_tune": index == len(group) - 1 and not self.options.keep_tunes}
            self.submitted += 1
            self.running[self.actors[slot].run.remote(job, ref)] = (slot, job, self.submitted)

    def wait(self) -> list[tuple[dict, dict | None]]:
        """Blocks until a job ends; returns [(job, result)]. When a worker died: (job, None) for the job
        it was running, and (job, NOT_STARTED) for the jobs queued behind it."""
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        ready, _ = ray.wait(list(self.running), num_returns=1)
        finished = []
        for ref in ready:
            if ref not in self.running:  # dropped by _replace in this loop
                continue
            slot, job, order = self.running.pop(ref)
            try:
                finished.append((job, ray.get(ref)))
            except RayActorError as error:
                if getattr(error, "actor_init_failed", False):
                    raise EvaluationError(f"a new worker could not start its ComfyUI server: {error}") from None
                finished.extend(self._replace(slot, job, order))
            except RayTaskError as error:  # an error of ours in the worker: this job fails, the run goes on
                finished.append((job, failed(job, f"the worker failed: {error}"[:4000])))
            except RayError:  # its node or its objects were lost
                finished.extend(self._replace(slot, job, order))
        return finished

    def _replace(self, slot: int, job: dict, order: int) -> list[tuple[dict, dict | None]]:
        """The worker of `slot` died: its jobs come back, and a new worker takes the slot. Only the
        job it was running (the first submitted) counts the death as an attempt."""
        import ray

        lost = [(order, job)]
        for ref, (other_slot, other, other_order) in list(self.running.items()):
            if other_slot == slot:
                del self.running[ref]
                lost.append((other_order, other))
        lost.sort(key=lambda entry: entry[0])
        print(f"evaluate: worker {slot} died; {len(lost)} job(s) go back to the queue", file=sys.stderr, flush=True)
        ray.kill(self.actors[slot])  # an actor that stopped answering may still hold its GPU
        self.actors[slot] = self._new_actor(slot)
        self.identities[slot] = None  # known when it answers
        return [(lost_job, None if index == 0 else NOT_STARTED) for index, (_, lost_job) in enumerate(lost)]

    def kill(self, slot: int) -> None:
        """Kills a worker as a lost node would be (the tests' fault injection)."""
        import ray

        ray.kill(self.actors[slot])

    def busy_slots(self) -> set[int]:
        return {slot for slot, _, _ in self.running.values()}

    def stop(self) -> None:
        import ray

        if not self.started_ray:
            return
        if not self.running:  # a finished run: the workers stop their servers and remove their folders
            for actor in self.actors:
                try:
                    ray.get(actor.shutdown.remote(), timeout=60)
                except Exception:  # a dead or hung worker; its server dies with it
                    pass
        for actor in self.actors:  # an interrupted run: killed at once, each server dies with its worker
            ray.kill(actor)
        ray.shutdown()


def interrupt_on_sigterm():
    """SIGTERM stops a run as Ctrl-C does: the jobs written so far stay, nothing half-written.
    Returns the handler it replaced."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    return signal.signal(signal.SIGTERM, handler)
