#!/bin/bash
# Install Sana Studio for this user on a Mac with Apple silicon, no administrator needed: its own
# Python environment, "Sana Studio.app" in ~/Applications, and a `sana-studio` command. Running it
# again replaces an earlier install. Written for the bash 3.2 that macOS ships.
#
#   installers/macos/install.sh [SOURCE]    SOURCE: a source folder (default: this checkout) or a wheel
#
# Where things go:
#   ~/Library/Application Support/sana-studio/venv                   the Python environment
#   ~/Library/Application Support/sana-studio/install-manifest.txt   every path added, for uninstall.sh
#   ~/Applications/Sana Studio.app                                   opens the window
#   ~/.local/bin/sana-studio                                         the command line
# Downloaded models go to ~/Library/Application Support/sana-studio/models; uninstalling keeps them.
#
# Settings (environment): SANA_STUDIO_PYTHON (default: the first python3.x >= 3.10),
# SANA_STUDIO_TORCH_SPEC (default: torch; PyPI's macOS build, with Metal (MPS) support).
set -eo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source_path=${1:-$(cd "$here/../.." && pwd)}
data="$HOME/Library/Application Support/sana-studio"
venv=$data/venv
app="$HOME/Applications/Sana Studio.app"
bin_dir=$HOME/.local/bin
launcher=$bin_dir/sana-studio
manifest=$data/install-manifest.txt

say() { echo "install: $*" >&2; }
die() { say "$*"; exit 1; }

# Lines "dir PATH" (made here: removed if empty), "file PATH", "tree PATH" (removed whole: the
# venv and the .app); uninstall.sh walks them backwards.
pending=()
record() {
  if [ -f "$manifest" ]; then printf '%s %s\n' "$1" "$2" >>"$manifest"; else pending+=("$1 $2"); fi
}
make_dir() {
  local dir=$1 missing=() index
  while [ ! -d "$dir" ]; do missing+=("$dir"); dir=$(dirname "$dir"); done
  index=${#missing[@]}
  while [ "$index" -gt 0 ]; do
    index=$((index - 1))
    mkdir "${missing[$index]}"
    record dir "${missing[$index]}"
  done
}

stage=""
started=0
finished=0
cleanup() {
  if [ -n "$stage" ]; then rm -rf "$stage"; fi
  if [ "$started" = 1 ] && [ "$finished" = 0 ]; then
    say "stopped before the end; removing what was added"
    if [ -f "$manifest" ]; then bash "$here/uninstall.sh" "$manifest" >/dev/null 2>&1 || true; fi
  fi
}
trap cleanup EXIT

# --- checks before anything is written -------------------------------------------------------
[ "$(uname -s)" = Darwin ] || die "this is the macOS installer; on Linux use installers/linux/install.sh"
# PyTorch publishes no builds for Intel Macs since 2.2, and the engine needs 2.4 or newer.
[ "$(uname -m)" = arm64 ] || die "Sana Studio needs a Mac with Apple silicon (PyTorch has no current Intel Mac builds)"
case $source_path in
  *.whl) [ -f "$source_path" ] || die "$source_path does not exist" ;;
  *) [ -f "$source_path/pyproject.toml" ] || die "$source_path is neither a wheel nor a source folder with pyproject.toml" ;;
esac

python=${SANA_STUDIO_PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3 python3.13 python3.12 python3.11 python3.10; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      python=$candidate; break
    fi
  done
fi
# /usr/bin/python3 (Xcode's) is 3.9: a newer one comes from python.org or `brew install python`.
[ -n "$python" ] || die "no Python 3.10 or newer found; install one from python.org or with Homebrew, or set SANA_STUDIO_PYTHON"

if [ -f "$manifest" ]; then
  say "replacing the earlier install"
  bash "$here/uninstall.sh" "$manifest" >/dev/null
fi
for path in "$venv" "$app" "$launcher" "$data/uninstall.sh"; do
  if [ -e "$path" ] || [ -L "$path" ]; then
    die "$path already exists and is not from this installer; move it away and run again"
  fi
done

# --- the environment -------------------------------------------------------------------------
started=1
make_dir "$data"
pending+=("file $manifest")
printf '%s\n' "${pending[@]}" >"$manifest"

say "making the Python environment in $venv"
record tree "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)  # an array: the path has a space

say "installing torch"
"${pip[@]}" install "${SANA_STUDIO_TORCH_SPEC:-torch}"

say "installing Sana Studio from $source_path"
case $source_path in
  *.whl) "${pip[@]}" install "$source_path" ;;
  *)
    # Built from a copy, so the source folder gets no build/ or *.egg-info.
    stage=$(mktemp -d)
    tar -C "$source_path" --exclude=./.git --exclude=./.venv --exclude=./venv --exclude=./build --exclude=./dist \
        --exclude=./tests --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache -cf - . \
      | tar -C "$stage" -xf -
    "${pip[@]}" install "$stage"
    ;;
esac

# --- the .app, the command, the uninstaller --------------------------------------------------
icons=$("$venv/bin/python" -c 'import pathlib, resources; print(pathlib.Path(resources.__file__).parent / "icons")')
version=$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("sana-studio"))')
make_dir "$HOME/Applications"
record tree "$app"
mkdir -p "$app/Contents/MacOS" "$app/Contents/Resources"
cp "$icons/sana-studio.icns" "$app/Contents/Resources/sana-studio.icns"
cat >"$app/Contents/MacOS/sana-studio" <<EOF
#!/bin/sh
exec "$venv/bin/python" -m app.main "\$@"
EOF
chmod +x "$app/Contents/MacOS/sana-studio"
cat >"$app/Contents/Info.plist" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>CFBundleName</key><string>Sana Studio</string>
  <key>CFBundleDisplayName</key><string>Sana Studio</string>
  <key>CFBundleIdentifier</key><string>org.sana-studio.app</string>
  <key>CFBundleExecutable</key><string>sana-studio</string>
  <key>CFBundleIconFile</key><string>sana-studio</string>
  <key>CFBundlePackageType</key><string>APPL</string>
  <key>CFBundleShortVersionString</key><string>$version</string>
  <key>LSMinimumSystemVersion</key><string>12.0</string>
  <key>NSHighResolutionCapable</key><true/>
</dict>
</plist>
EOF

make_dir "$bin_dir"
record file "$launcher"
printf '#!/bin/sh\nexec "%s/bin/sana-studio" "$@"\n' "$venv" >"$launcher"
chmod +x "$launcher"

record file "$data/uninstall.sh"
cp "$here/uninstall.sh" "$data/uninstall.sh"
chmod +x "$data/uninstall.sh"
finished=1

say "done. Open Sana Studio from ~/Applications (or Launchpad), or run: $launcher"
say "to remove it: \"$data/uninstall.sh\""
