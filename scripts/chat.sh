#!/usr/bin/env bash
# Set up what is missing, build Buddy in release mode and open the chat on the default model.
# Any arguments are passed to buddy (e.g. scripts/chat.sh --budget 0.9).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
swift build -c release --product buddy >&2
exec "$root/.build/release/buddy" "$@"
