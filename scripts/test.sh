#!/usr/bin/env bash
# Set up what is missing (packages, the default model), then build and run the whole test
# suite from an optimised build. The real-model tests need the model and ../shared/data.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
swift test -c release "$@"
