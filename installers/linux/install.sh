#!/usr/bin/env bash
# Install Sana Studio for this user, no root needed: its own Python environment, a `sana-studio`
# command, a menu entry and an icon. Running it again replaces an earlier install.
#
#   installers/linux/install.sh [SOURCE]    SOURCE: a source folder (default: this checkout) or a wheel
#
# Where things go (XDG base directories):
#   ${XDG_DATA_HOME:-~/.local/share}/sana-studio/venv        the Python environment
#   ${XDG_BIN_HOME:-~/.local/bin}/sana-studio                the command (a two-line launcher)
#   ${XDG_DATA_HOME:-~/.local/share}/applications/sana-studio.desktop
#   ${XDG_DATA_HOME:-~/.local/share}/icons/hicolor/{scalable,256x256}/apps/sana-studio.{svg,png}
#   ${XDG_DATA_HOME:-~/.local/share}/sana-studio/install-manifest.txt   every path added, for uninstall.sh
# Downloaded models go to .../sana-studio/models when the app fetches them; uninstalling keeps them.
#
# Settings (environment):
#   SANA_STUDIO_PYTHON       the Python to build the environment from (default: the first python3.x >= 3.10)
#   SANA_STUDIO_TORCH_SPEC   the torch requirement (default: torch)
#   SANA_STUDIO_TORCH_INDEX  where torch comes from: a package index URL, or "default" for pip's own
#                            configuration. Unset: PyPI's CUDA build when `nvidia-smi` sees a GPU, else
#                            PyTorch's CPU-only index (a tenth of the download).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_path=${1:-$(cd "$here/../.." && pwd)}
data_home=${XDG_DATA_HOME:-$HOME/.local/share}
data=$data_home/sana-studio
venv=$data/venv
bin_dir=${XDG_BIN_HOME:-$HOME/.local/bin}
launcher=$bin_dir/sana-studio
desktop_file=$data_home/applications/sana-studio.desktop
icons=$data_home/icons/hicolor
svg_icon=$icons/scalable/apps/sana-studio.svg
png_icon=$icons/256x256/apps/sana-studio.png
manifest=$data/install-manifest.txt

say() { echo "install: $*" >&2; }
die() { say "$*"; exit 1; }

# --- what is added is written down as it is added --------------------------------------------
# Lines "dir PATH" (a folder this script made: removed if empty), "file PATH", "venv PATH"
# (removed whole). uninstall.sh walks them backwards.
pending=()
record() {
  if [[ -f $manifest ]]; then printf '%s %s\n' "$1" "$2" >>"$manifest"; else pending+=("$1 $2"); fi
}
make_dir() {  # mkdir -p that records each folder it makes
  local dir=$1 missing=()
  while [[ ! -d $dir ]]; do missing=("$dir" "${missing[@]}"); dir=$(dirname "$dir"); done
  for dir in "${missing[@]}"; do mkdir "$dir"; record dir "$dir"; done
}
add_file() {  # add_file DESTINATION < content
  make_dir "$(dirname "$1")"
  record file "$1"
  cat >"$1"
}

stage=""
started=0  # once set, a failure (or Ctrl-C) removes what this run added
finished=0
cleanup() {
  if [[ -n $stage ]]; then rm -rf "$stage"; fi
  if ((started && !finished)); then
    say "stopped before the end; removing what was added"
    if [[ -f $manifest ]]; then bash "$here/uninstall.sh" "$manifest" >/dev/null 2>&1 || true; fi
  fi
}
trap cleanup EXIT

# --- checks before anything is written -------------------------------------------------------
[[ $source_path == *.whl && -f $source_path ]] || [[ -f $source_path/pyproject.toml ]] \
  || die "$source_path is neither a wheel nor a source folder with pyproject.toml"

python=${SANA_STUDIO_PYTHON:-}
if [[ -z $python ]]; then
  for candidate in python3 python3.13 python3.12 python3.11 python3.10; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      python=$candidate; break
    fi
  done
fi
[[ -n $python ]] || die "no Python 3.10 or newer found; install python3 (and python3-venv), or set SANA_STUDIO_PYTHON"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$python is older than 3.10"

if [[ -f $manifest ]]; then
  say "replacing the earlier install"
  bash "$here/uninstall.sh" "$manifest" >/dev/null
fi
for path in "$launcher" "$desktop_file" "$svg_icon" "$png_icon" "$venv" "$data/uninstall.sh"; do
  if [[ -e $path || -L $path ]]; then
    die "$path already exists and is not from this installer; move it away and run again"
  fi
done

torch_spec=${SANA_STUDIO_TORCH_SPEC:-torch}
if [[ -n ${SANA_STUDIO_TORCH_INDEX+set} ]]; then
  torch_index=${SANA_STUDIO_TORCH_INDEX:-default}
  build="torch from ${torch_index}"
elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  torch_index=default  # PyPI's Linux torch is the CUDA build
  build="the CUDA build of torch (nvidia-smi sees a GPU)"
else
  torch_index=https://download.pytorch.org/whl/cpu
  build="the CPU build of torch (no NVIDIA GPU found)"
fi
torch_args=()
if [[ $torch_index != default ]]; then torch_args=(--index-url "$torch_index"); fi

# --- the environment -------------------------------------------------------------------------
started=1
make_dir "$data"
pending+=("file $manifest")
printf '%s\n' "${pending[@]}" >"$manifest"
pending=()

say "making the Python environment in $venv"
record venv "$venv"
"$python" -m venv "$venv" \
  || die "$python cannot make a virtual environment; on Debian or Ubuntu: sudo apt install python3-venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

say "installing $build"
"${pip[@]}" install "${torch_args[@]}" "$torch_spec"
if [[ $build == *CUDA* ]] && ! "$venv/bin/python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  say "warning: this torch build cannot use the GPU (is the NVIDIA driver older than the build needs?), so"
  say "Sana Studio will run on the CPU. Another build: SANA_STUDIO_TORCH_INDEX=https://download.pytorch.org/whl/cu126 $0"
fi

say "installing Sana Studio from $source_path"
if [[ $source_path == *.whl ]]; then
  "${pip[@]}" install "$source_path"
else
  # Built from a copy: an in-place build would leave build/ and *.egg-info in the source folder,
  # and a stale build/lib can put deleted modules into the wheel.
  stage=$(mktemp -d)
  tar -C "$source_path" --exclude=./.git --exclude=./.venv --exclude=./venv --exclude=./build --exclude=./dist \
      --exclude=./tests --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache -cf - . \
    | tar -C "$stage" -xf -
  "${pip[@]}" install "$stage"
  rm -rf "$stage"
  stage=""
fi
[[ -x $venv/bin/sana-studio ]] || die "the package installed no sana-studio command"

# --- launcher, menu entry, icons -------------------------------------------------------------
add_file "$launcher" <<EOF
#!/bin/sh
# Sana Studio, installed by installers/linux/install.sh; removed by its uninstall.sh.
exec "$venv/bin/sana-studio" "\$@"
EOF
chmod +x "$launcher"

entry=$(<"$here/sana-studio.desktop")
add_file "$desktop_file" <<<"${entry//@LAUNCHER@/$launcher}"

resources=$("$venv/bin/python" -c 'import pathlib, resources; print(pathlib.Path(resources.__file__).parent / "icons")')
add_file "$svg_icon" <"$resources/sana-studio.svg"
add_file "$png_icon" <"$resources/sana-studio.png"

add_file "$data/uninstall.sh" <"$here/uninstall.sh"
chmod +x "$data/uninstall.sh"
finished=1

say "done. Start Sana Studio from the applications menu, or run: sana-studio"
case ":$PATH:" in
  *":$bin_dir:"*) ;;
  *) say "note: $bin_dir is not on your PATH; run $launcher, or add that folder to PATH" ;;
esac
say "to remove it: $data/uninstall.sh"
