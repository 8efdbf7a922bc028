#!/usr/bin/env bash
# Packs geoseg's dependencies for a GPU host that has its own Python, PyTorch and CUDA but no
# network and no geoseg install (a lent GPU box): run it here, carry the tarball there, then
#   mkdir -p /tmp/site && tar -xJf geoseg-site.tar.xz -C /tmp/site
#   PYTHONPATH=/tmp/site:$PWD bash benchmarks/gpu_check.sh
#
#   benchmarks/gpu_wheels.sh [PYTHON_VERSION=3.12] [OUT=geoseg-site.tar.xz] [--ray]
#
# Wheels for that Python (manylinux x86-64) from the tested versions (constraints.txt), minus
# what a PyTorch image already holds (EXCLUDE; carrying a second numpy would shadow the one its
# packages were built for); shared libraries stripped and the whole xz-compressed (the
# 2026-12-04 H200 lease: 42 MB for Python 3.12, 19 MB more with --ray, against 97 + 79 MB of
# wheels; a lease carried at most 64 MiB). Needs pip, strip and xz here.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-3.12}
out=$(realpath -m "${2:-geoseg-site.tar.xz}")
ray=${3:-}
EXCLUDE=${EXCLUDE:-"numpy pandas pyarrow scipy scikit-image pillow pyyaml rich psutil xarray attrs
certifi click cloudpickle fsspec packaging pyparsing python-dateutil toolz typing-extensions zipp
torch torchvision safetensors timm huggingface-hub onnxruntime onnx tqdm requests protobuf
msgpack filelock"}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
plat=(--only-binary=:all: --python-version "$py" --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
# numba is left out (llvmlite installs 173 MB): geoseg then traces vectors with its numpy
# fallback there (same features, slower); add numba here when a lease carries more
pkgs=(rasterio zarr numcodecs dask geopandas pyogrio shapely pyproj affine pydantic pystac)
[ "$ray" = "--ray" ] && pkgs+=(ray)
python3 -m pip download -q "${plat[@]}" -c constraints.txt -d "$tmp/whl" "${pkgs[@]}"
# segmentation-models-pytorch's own needs (torch, timm, ...) are the image's
python3 -m pip download -q --no-deps "${plat[@]}" -c constraints.txt -d "$tmp/whl" \
    segmentation-models-pytorch
for name in $EXCLUDE; do
    pattern=$(echo "$name" | tr '-' '_')
    rm -f "$tmp/whl/${pattern}"-[0-9]*.whl "$tmp/whl/${name}"-[0-9]*.whl
done
python3 -m pip install -q --no-deps --no-compile --target "$tmp/site" "${plat[@]}" "$tmp"/whl/*.whl
cd "$tmp/site"
rm -rf obstore* ray/jars ray/rllib ray/data ray/serve ray/tune ray/train  # not on this path
find . -name tests -type d -prune -exec rm -rf {} +
find . -name __pycache__ -type d -prune -exec rm -rf {} +
find . -type f \( -name '*.so*' -o -perm -u+x \) -print0 | while IFS= read -r -d '' f; do
    if head -c 4 "$f" | grep -q ELF; then strip --strip-unneeded "$f" 2>/dev/null || true; fi
done
tar -cf - . | xz -9 -T0 > "$out"
echo "$out: $(du -h "$out" | cut -f1) (Python $py; unpack with tar -xJf into a PYTHONPATH folder)"
