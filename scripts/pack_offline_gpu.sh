#!/usr/bin/env bash
# Pack what an offline GPU machine with Python 3.12 + torch + transformers (but no Ray, diffusers, librosa or
# ffmpeg) needs to run `cli.py run` and the GPU tests, into DIR (default .whl, ~50 MB):
#   wheels of the missing packages, Ray without its Java jars / rllib / serve / web front end, stripped (xz),
#   imageio-ffmpeg's static ffmpeg (xz, ~21 MB) and setup.sh.
# There: `source DIR/setup.sh` installs into /tmp/site (PYTHONPATH) and puts ffmpeg on PATH.
# DIR/all holds all of it (~50 MB): with the repository's tree (~17 MB with the demo weights) it just fits one
# device call's 64 MiB (66.9 of 67.1 MB on 2026-12-04). Should the tree outgrow that, DIR/python (wheels + Ray,
# ~29 MB) and DIR/ffmpeg (~21 MB) split it: carry one per call on the same warm machine (/tmp/site and /tmp/bin
# stay).
set -euo pipefail
dir=${1:-.whl}
mkdir -p "$dir"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d "$1" "${@:2}"; }
download "$dir" diffusers==0.42.1 librosa==0.11.0 soundfile cffi pycparser audioread soxr pooch decorator platformdirs \
    ffmpeg-python future jsonschema jsonschema-specifications referencing rpds-py
if [ ! -f "$dir/ray-slim.tar.xz" ]; then
    work=$(mktemp -d)
    download "$work" ray==2.60.0
    # Ray Data needs none of Java, RLlib, Serve, the LLM library or the dashboard's web front end; its native
    # binaries ship with symbols that nothing here reads (stripping them saves ~7 MB packed).
    mkdir "$work/ray" && (cd "$work/ray" && unzip -q ../ray-*.whl && \
        rm -rf ray/jars ray/rllib ray/serve ray/llm ray/dashboard/client/build && find . -name '*.js.map' -delete && \
        strip --strip-unneeded ray/_raylet.so ray/core/src/ray/gcs/gcs_server ray/core/src/ray/raylet/raylet)
    (cd "$work/ray" && tar -cf - . | xz -9e -T2) > "$dir/ray-slim.tar.xz"
    rm -rf "$work"
fi
if [ ! -f "$dir/ffmpeg.xz" ]; then
    work=$(mktemp -d)
    download "$work" imageio-ffmpeg==0.6.0 --platform manylinux2010_x86_64
    (cd "$work" && unzip -q imageio_ffmpeg-*.whl)
    xz -9e -T2 -c "$work"/imageio_ffmpeg/binaries/ffmpeg-* > "$dir/ffmpeg.xz"
    rm -rf "$work"/imageio_ffmpeg/binaries/ffmpeg-*
    (cd "$work" && tar -cf - imageio_ffmpeg | xz -9e) > "$dir/imageio_ffmpeg-py.tar.xz"
    rm -rf "$work"
fi
cat > "$dir/setup.sh" <<'SETUP'
# source this on the GPU machine from the repository root (pieces left behind are skipped: a call may carry less)
here=$(dirname "${BASH_SOURCE[0]}")
compgen -G "$here/*.whl" > /dev/null && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$here"/*.whl
[ -f "$here/ray-slim.tar.xz" ] && tar -xJf "$here/ray-slim.tar.xz" -C /tmp/site
[ -f "$here/imageio_ffmpeg-py.tar.xz" ] && tar -xJf "$here/imageio_ffmpeg-py.tar.xz" -C /tmp/site
if [ -f "$here/ffmpeg.xz" ]; then
    mkdir -p /tmp/bin && xz -dc "$here/ffmpeg.xz" > /tmp/bin/ffmpeg && chmod +x /tmp/bin/ffmpeg
    export PATH=/tmp/bin:$PATH IMAGEIO_FFMPEG_EXE=/tmp/bin/ffmpeg
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 USE_FLAX=0 USE_TF=0 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
SETUP
mkdir -p "$dir/all" "$dir/python" "$dir/ffmpeg"
ln -f "$dir"/*.whl "$dir"/*.xz "$dir/setup.sh" "$dir/all/"
ln -f "$dir"/*.whl "$dir/ray-slim.tar.xz" "$dir/imageio_ffmpeg-py.tar.xz" "$dir/setup.sh" "$dir/python/"
ln -f "$dir/ffmpeg.xz" "$dir/setup.sh" "$dir/ffmpeg/"
du -sh "$dir/all" "$dir/python" "$dir/ffmpeg"; ls -la "$dir"
