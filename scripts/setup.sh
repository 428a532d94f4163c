#!/usr/bin/env bash
# Installs what Buddy needs on a Debian machine when it is missing: the OpenBLAS and
# ncursesw development packages, the default model (scripts/fetch-model.sh) and the Gemma 3
# model whose tokenizer the tests check (scripts/fetch-model.sh gemma3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

missing=()
for pkg in libncursesw5-dev libopenblas-dev pkg-config tmux; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}..." >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
fi

"$root/scripts/fetch-model.sh"
"$root/scripts/fetch-model.sh" gemma3
