#!/usr/bin/env bash
# Pack what an offline GPU machine with Python 3.12 + torch + transformers (but no Ray, diffusers, librosa or
# ffmpeg) needs to run `cli.py run`, the GPU tests and scripts/gpu_smoke.py, into DIR (default .whl, ~45 MB):
#   the missing packages (and coverage.py) installed into one folder here and packed (xz), Ray without its Java
#   jars / rllib / serve / web front end, stripped (xz), imageio-ffmpeg's static ffmpeg (xz, ~21 MB) and setup.sh.
# There: `source DIR/all/setup.sh` unpacks them into /tmp/site (PYTHONPATH) and puts ffmpeg on PATH.
# DIR/all holds all of it: with the repository's tree (~17 MB with the demo weights) it fits one device call's
# 64 MiB. DIR/python (packages + Ray) and DIR/ffmpeg split it: carry one per call on the same warm machine
# (/tmp/site and /tmp/bin stay).
#
# --fa4: also FlashAttention-4 and its CuTe DSL (~111 MB of wheels, one of 92 MB) for scripts/fa4_bench.py, in
# DIR/fa4/part1..3: each fits one call beside the tree. Carry part1, part2, then part3 in consecutive calls on
# the same warm machine: each call's `bash DIR/fa4/partN/stage.sh` keeps its pieces in /tmp/fa4-pieces, the
# last one joins and installs them into /tmp/fa4-site (scripts/fa4_bench.py adds it with site.addsitedir).
set -euo pipefail
fa4=0
if [ "${1:-}" = "--fa4" ]; then fa4=1; shift; fi
dir=${1:-.whl}
mkdir -p "$dir"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
target=(--python-version 3.12 --implementation cp "${platforms[@]}")
download() { python3 -m pip download -q --no-deps --only-binary=:all: "${target[@]}" -d "$1" "${@:2}"; }
packages=(diffusers==0.42.1 librosa==0.11.0 soundfile cffi pycparser audioread soxr pooch decorator platformdirs
          ffmpeg-python future jsonschema jsonschema-specifications referencing rpds-py coverage==7.18.0)
mkdir -p "$dir/wheels"
download "$dir/wheels" "${packages[@]}"
# The wheels installed into one folder here, then xz'd: half the size of the wheels' own zip compression.
listing=$(cd "$dir/wheels" && ls ./*.whl | sort)
if [ ! -f "$dir/packages.tar.xz" ] || [ "$listing" != "$(cat "$dir/packages.txt" 2>/dev/null)" ]; then
    work=$(mktemp -d)
    python3 -m pip install -q --no-deps --no-compile --no-index --only-binary=:all: "${target[@]}" --target "$work/site" \
        $(cd "$dir/wheels" && ls ./*.whl | sed "s|^\./|$dir/wheels/|")
    (cd "$work/site" && rm -rf bin && tar -cf - . | xz -9e -T2) > "$dir/packages.tar.xz.part"
    mv "$dir/packages.tar.xz.part" "$dir/packages.tar.xz"
    echo "$listing" > "$dir/packages.txt"
    rm -rf "$work"
fi
if [ ! -s "$dir/ray-slim.tar.xz" ]; then
    work=$(mktemp -d)
    download "$work" ray==2.60.0
    # Ray Data needs none of Java, RLlib, Serve, the LLM library or the dashboard's web front end; its native
    # binaries ship with symbols that nothing here reads (stripping them saves ~7 MB packed).
    mkdir "$work/ray" && (cd "$work/ray" && unzip -q ../ray-*.whl && \
        rm -rf ray/jars ray/rllib ray/serve ray/llm ray/dashboard/client/build && find . -name '*.js.map' -delete && \
        strip --strip-unneeded ray/_raylet.so ray/core/src/ray/gcs/gcs_server ray/core/src/ray/raylet/raylet)
    (cd "$work/ray" && tar -cf - . | xz -9e -T2) > "$dir/ray-slim.tar.xz.part"
    mv "$dir/ray-slim.tar.xz.part" "$dir/ray-slim.tar.xz"
    rm -rf "$work"
fi
if [ ! -s "$dir/ffmpeg.xz" ] || [ ! -s "$dir/imageio_ffmpeg-py.tar.xz" ]; then
    work=$(mktemp -d)
    download "$work" imageio-ffmpeg==0.6.0 --platform manylinux2010_x86_64
    (cd "$work" && unzip -q imageio_ffmpeg-*.whl)
    xz -9e -T2 -c "$work"/imageio_ffmpeg/binaries/ffmpeg-* > "$dir/ffmpeg.xz.part"
    rm -rf "$work"/imageio_ffmpeg/binaries/ffmpeg-*
    (cd "$work" && tar -cf - imageio_ffmpeg | xz -9e) > "$dir/imageio_ffmpeg-py.tar.xz"
    mv "$dir/ffmpeg.xz.part" "$dir/ffmpeg.xz"
    rm -rf "$work"
fi
cat > "$dir/setup.sh" <<'SETUP'
# source this on the GPU machine from the repository root (pieces left behind are skipped: a call may carry less)
here=$(dirname "${BASH_SOURCE[0]}")
mkdir -p /tmp/site
[ -f "$here/packages.tar.xz" ] && tar -xJf "$here/packages.tar.xz" -C /tmp/site
[ -f "$here/ray-slim.tar.xz" ] && tar -xJf "$here/ray-slim.tar.xz" -C /tmp/site
[ -f "$here/imageio_ffmpeg-py.tar.xz" ] && tar -xJf "$here/imageio_ffmpeg-py.tar.xz" -C /tmp/site
if [ -f "$here/ffmpeg.xz" ]; then
    mkdir -p /tmp/bin && xz -dc "$here/ffmpeg.xz" > /tmp/bin/ffmpeg && chmod +x /tmp/bin/ffmpeg
fi
[ -x /tmp/bin/ffmpeg ] && export PATH=/tmp/bin:$PATH IMAGEIO_FFMPEG_EXE=/tmp/bin/ffmpeg
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 USE_FLAX=0 USE_TF=0 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
SETUP
rm -rf "$dir/all" "$dir/python" "$dir/ffmpeg"
mkdir -p "$dir/all" "$dir/python" "$dir/ffmpeg"
ln -f "$dir"/*.xz "$dir/setup.sh" "$dir/all/"
ln -f "$dir/packages.tar.xz" "$dir/ray-slim.tar.xz" "$dir/imageio_ffmpeg-py.tar.xz" "$dir/setup.sh" "$dir/python/"
ln -f "$dir/ffmpeg.xz" "$dir/setup.sh" "$dir/ffmpeg/"

if [ "$fa4" = 1 ]; then
    # FlashAttention-4 4.0.0b36 and what it imports, for torch's CUDA 13 build (the GPU machine's), exact versions.
    fa4_wheels="$dir/fa4/wheels"
    mkdir -p "$fa4_wheels"
    download "$fa4_wheels" flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
        nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 cuda-bindings==13.5.0 \
        cuda-pathfinder==1.9.1 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5 quack-kernels==0.6.5
    # One archive of the wheels (already compressed: tar only), cut into pieces of at most 45 MB: with the tree
    # (~17 MB) each piece fits one call's 64 MiB. Part N carries piece N; the last part also the installer.
    rm -rf "$dir/fa4"/part* "$dir/fa4/pieces" && mkdir -p "$dir/fa4/pieces"
    (cd "$fa4_wheels" && tar -cf - ./*.whl) | split -b 45000000 -d -a 1 - "$dir/fa4/pieces/fa4-wheels.tar."
    pieces=("$dir"/fa4/pieces/fa4-wheels.tar.*)
    count=${#pieces[@]}
    for index in "${!pieces[@]}"; do
        part="$dir/fa4/part$((index + 1))"
        mkdir -p "$part" && ln -f "${pieces[$index]}" "$part/"
        cat > "$part/stage.sh" <<STAGE
# Part $((index + 1)) of $count: keep this piece on the machine; the last part joins and installs them all.
set -e
here=\$(dirname "\${BASH_SOURCE[0]}")
mkdir -p /tmp/fa4-pieces && cp "\$here"/fa4-wheels.tar.* /tmp/fa4-pieces/
have=\$(ls /tmp/fa4-pieces | wc -l)
if [ "\$have" = "$count" ]; then
    rm -rf /tmp/fa4-wheels && mkdir -p /tmp/fa4-wheels && cat /tmp/fa4-pieces/fa4-wheels.tar.* | tar -xf - -C /tmp/fa4-wheels
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fa4-site /tmp/fa4-wheels/*.whl
    echo "FA4 installed into /tmp/fa4-site (\$(ls /tmp/fa4-wheels | wc -l) wheels)"
else
    echo "FA4: \$have of $count pieces on this machine; carry the next part"
fi
STAGE
    done
    ls -l "$fa4_wheels"
    du -sh "$dir"/fa4/part*
fi
du -sh "$dir/all" "$dir/python" "$dir/ffmpeg"; ls -la "$dir"
