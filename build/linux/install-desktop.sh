#!/usr/bin/env bash
# Add Latent Desk to this user's application menu (Linux): a .desktop entry pointing at the
# built bundle and the icon, under ~/.local/share. Run after build/build.sh; run it again if
# dist/LatentDesk moves. Remove with: install-desktop.sh --uninstall
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
data="${XDG_DATA_HOME:-$HOME/.local/share}"
entry="$data/applications/latentdesk.desktop"
icon="$data/icons/hicolor/256x256/apps/latentdesk.png"
if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$entry" "$icon"
    echo "removed $entry and $icon"
    exit 0
fi
exe="$root/dist/LatentDesk/LatentDesk"
[ -x "$exe" ] || { echo "no $exe: run build/build.sh first" >&2; exit 1; }
mkdir -p "$(dirname "$entry")" "$(dirname "$icon")"
cp "$root/resources/icons/latentdesk.png" "$icon"
sed "s#@EXEC@#$exe#" "$(dirname "$0")/latentdesk.desktop.in" > "$entry.tmp" && mv "$entry.tmp" "$entry"
command -v update-desktop-database >/dev/null && update-desktop-database -q "$data/applications" || true
echo "installed $entry"
