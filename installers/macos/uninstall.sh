#!/bin/bash
# Remove Sana Studio: exactly what install.sh listed in its manifest, and nothing else.
# Downloaded models (~/Library/Application Support/sana-studio/models) and settings are kept.
#
#   uninstall.sh [MANIFEST]
set -eo pipefail

manifest=${1:-"$HOME/Library/Application Support/sana-studio/install-manifest.txt"}
[ -f "$manifest" ] || { echo "uninstall: nothing to remove ($manifest is missing)" >&2; exit 1; }

entries=()
while IFS= read -r line || [ -n "$line" ]; do entries+=("$line"); done <"$manifest"
index=${#entries[@]}
while [ "$index" -gt 0 ]; do
  index=$((index - 1))
  kind=${entries[$index]%% *}
  path=${entries[$index]#* }
  case $path in /*) ;; *) echo "uninstall: skipping a line that is not an absolute path: ${entries[$index]}" >&2; continue ;; esac
  case $kind in
    file) rm -f -- "$path" ;;
    tree)
      # Removed whole, so check it is one of the two things the installer makes.
      if [ -e "$path" ] && [ ! -f "$path/pyvenv.cfg" ] && [ ! -f "$path/Contents/Info.plist" ]; then
        echo "uninstall: kept $path: it is neither a Python environment nor an app" >&2
      else
        rm -rf -- "$path"
      fi
      ;;
    dir)
      if [ -d "$path" ] && ! rmdir -- "$path" 2>/dev/null; then
        echo "uninstall: kept $path: it holds files the installer did not add" >&2
      fi
      ;;
    *) echo "uninstall: skipping an unknown line: ${entries[$index]}" >&2 ;;
  esac
done
echo "uninstall: Sana Studio is removed" >&2
