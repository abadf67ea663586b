"""On the test servers' PYTHONPATH: `import diffusers` fails in ComfyUI's process, as in a
ComfyUI without it (a failed install, a conflict with another pack). The pack must not need it."""

import sys


class RefuseDiffusers:
    def find_spec(self, name, path=None, target=None):
        if name == "diffusers" or name.startswith("diffusers."):
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)
        return None


sys.meta_path.insert(0, RefuseDiffusers())
print("sitecustomize: import diffusers is refused in this process", file=sys.stderr, flush=True)
