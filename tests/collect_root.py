"""pytest plugin (loaded by `-p collect_root`, see pyproject.toml): collect the repository
root as a plain folder, not a Python package.

The root is ComfyUI's custom-node package: its __init__.py imports ComfyUI, which only the
server has on its path, and pytest would import it to set up the package. Tests reach the
nodes through the server; the core (smooth_core) is imported directly. A conftest.py cannot
do this: its hooks apply only below its own folder.
"""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def pytest_collect_directory(path, parent):
    if path == ROOT:
        return pytest.Dir.from_parent(parent, path=path)
    return None
