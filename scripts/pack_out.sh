#!/usr/bin/env bash
# Pack a GPU session's output folder into the few files the device tool brings back (at most 8 files of at most
# 16 MiB each, 64 MiB together, no deeper than OUT/a/b/file): everything small (results.json, logs, CSVs) goes into
# one summary.tgz, the checkpoints into checkpoints.tar.NN pieces of 15 MiB. Unpack here with
#   mkdir -p DIR && tar xzf summary.tgz -C DIR && cat checkpoints.tar.* | tar x -C DIR
# Usage: bash scripts/pack_out.sh SRC DEST   (SRC: the folder scripts/gpu_session.sh wrote; DEST: usually $OUT)
set -euo pipefail
src=${1:?usage: bash scripts/pack_out.sh SRC DEST}
dest=${2:?usage: bash scripts/pack_out.sh SRC DEST}
[ -d "$src" ] || { echo "no folder $src to pack" >&2; exit 2; }
mkdir -p "$dest"
(cd "$src" && find . -type f ! -name '*.pt' -print0 | tar czf - --null -T -) >"$dest/summary.tgz"
if (cd "$src" && find . -type f -name '*.pt' | grep -q .); then
  (cd "$src" && find . -type f -name '*.pt' -print0 | tar cf - --null -T -) | split -b 15m -d - "$dest/checkpoints.tar."
fi
count=$(find "$dest" -maxdepth 1 -type f | wc -l)
echo "[pack] $(du -sh "$dest" | cut -f1) in $count files under $dest:" $(cd "$dest" && ls)
[ "$count" -le 8 ] || echo "[pack] warning: $count files; the device tool brings back 8 at most" >&2
