#!/usr/bin/env bash
# Remove Sana Studio: exactly what install.sh listed in its manifest, and nothing else.
# Downloaded models (…/sana-studio/models) and settings (~/.config/sana-studio) are kept.
#
#   uninstall.sh [MANIFEST]    default: ${XDG_DATA_HOME:-~/.local/share}/sana-studio/install-manifest.txt
set -euo pipefail

manifest=${1:-${XDG_DATA_HOME:-$HOME/.local/share}/sana-studio/install-manifest.txt}
[[ -f $manifest ]] || { echo "uninstall: nothing to remove ($manifest is missing)" >&2; exit 1; }

mapfile -t entries <"$manifest"
for ((i = ${#entries[@]} - 1; i >= 0; i--)); do
  kind=${entries[i]%% *}
  path=${entries[i]#* }
  [[ $path == /* ]] || { echo "uninstall: skipping a line that is not an absolute path: ${entries[i]}" >&2; continue; }
  case $kind in
    file) rm -f -- "$path" ;;
    venv)
      # Removed whole, so check it is what the installer made and not some other folder.
      if [[ -e $path && ! -f $path/pyvenv.cfg ]]; then
        echo "uninstall: kept $path: it is not a Python environment" >&2
      else
        rm -rf -- "$path"
      fi
      ;;
    dir)
      if [[ -d $path ]] && ! rmdir -- "$path" 2>/dev/null; then
        echo "uninstall: kept $path: it holds files the installer did not add" >&2
      fi
      ;;
    *) echo "uninstall: skipping an unknown line: ${entries[i]}" >&2 ;;
  esac
done
echo "uninstall: Sana Studio is removed" >&2
