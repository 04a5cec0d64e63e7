#!/usr/bin/env bash
# Build the CPU image with podman from a local Debian base (no registry needed) and run
# it as users do: --version, then a tiny participant job (with harmonization) and
# checks of its outputs, the container read-only, networkless and not root.
#
#   bash tests/container/build_and_run.sh [CACHE_DIR]
#   FLAVOR=cuda bash tests/container/build_and_run.sh   # the CUDA flavour (PyPI's CUDA torch);
#                                                       # without a GPU it runs on the CPU
#
# Needs (Debian): podman, buildah, debootstrap, runc; root (rootful podman).  Measured
# on 2 cores (2026-11-25): debootstrap 35 s; with the dependency layers cached, the
# rebuild took 93 s and the whole script 189 s (the participant job in the container
# 87 s); the first, uncached build (pip downloading ~70 wheels) took several minutes
# more (not timed).  On a slower AVX2-only machine (2026-12-01), cold caches and niced
# beside training: debootstrap 16.5 min, build 93 min, the rest 2.2 min.  Image: 2.1 GB.
# Rebuilt at 9f949ef (2026-12-03) with the base and dependency layers cached: 421 s
# in all (build 191 s, participant job in the container 217 s).
# Session 16 at b9bfc69 (the new bundled model), on a freshly reset machine with
# podman etc. just apt-installed, nothing cached: 321 s in all (debootstrap 36 s,
# build 194 s, participant job 85 s).
# The CUDA flavour (FLAVOR=cuda), session 18 at b1eec94, base image cached, no GPU here:
# 563 s in all (build 460 s, pulling PyPI's torch 2.13.0+cu130 and its nvidia-* wheels,
# ~3 GB, fast here; the participant job on the CPU inside it 86 s); image 6.2 GB.
# Session 19 at 5344ab2, torch layer not cached: 242 s in all; then
# tests/container/circleci_test_job.py ran the CircleCI test job against the image (158 s).
# Session 21 at 2f843ad (the in-brain N4; target-site images kept), dependency layers
# cached, niced beside ANTs preprocessing: 362 s in all; then circleci_test_job.py
# passed against it (441 s, niced beside training).
# Not part of .ci/run (CI's 2 cores are better spent on the test suite); CircleCI
# builds and runs the image with Docker on every push.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${1:-/tmp/harmonize_bids_container}
FLAVOR=${FLAVOR:-cpu}
if [ "$FLAVOR" = cpu ]; then IMAGE=localhost/harmonize_bids:latest; PRELOAD=()
else IMAGE=localhost/harmonize_bids:$FLAVOR; PRELOAD=(--build-arg PRELOAD=); fi
BASE=localhost/debian-bookworm:latest
mkdir -p "$CACHE"
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

# podman's defaults here: crun cannot raise RLIMIT_NPROC in this sandbox and
# cgroups are hybrid, so use runc and explicit ulimits.
RUN=(podman run --rm --runtime runc --ulimit "nofile=$(ulimit -n):$(ulimit -n)"
     --ulimit nproc=4096:4096 --read-only --tmpfs /tmp --network none -u 1000:1000)

if ! podman image exists "$BASE"; then
  say "debootstrap a minimal Debian bookworm base ..."
  if [ ! -f "$CACHE/rootfs.tar" ]; then
    rm -rf "$CACHE/rootfs"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$CACHE/rootfs" \
      http://deb.debian.org/debian > "$CACHE/debootstrap.log"
    tar -C "$CACHE/rootfs" -cf "$CACHE/rootfs.tar" .
    rm -rf "$CACHE/rootfs"
  fi
  podman import "$CACHE/rootfs.tar" "$BASE" > /dev/null
fi

# an offline CPU torch wheel, if this machine has one (pip's find-links)
for w in /opt/wheels/torch-2.13.0+cpu-cp311-*.whl; do
  [ -f "$w" ] && cp -u "$w" "$REPO/docker/wheels/"
done

say "building $IMAGE (FROM $BASE) ..."
# this machine reaches PyPI through a TLS-intercepting proxy: lend pip the host's CAs
CA=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  CA=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/host-ca.crt:ro
      --build-arg PIP_CERT=/etc/ssl/host-ca.crt)
fi
podman build --isolation chroot --layers -f "$REPO/Dockerfile" -t "$IMAGE" "${CA[@]}" \
  --build-arg BASE_IMAGE="$BASE" --build-arg FLAVOR="$FLAVOR" "${PRELOAD[@]}" \
  --build-arg VERSION_TAG=local \
  --build-arg VCS_REF="$(git -C "$REPO" rev-parse --short HEAD)" \
  --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$REPO" > "$CACHE/build.log" 2>&1 \
  || { tail -40 "$CACHE/build.log"; exit 1; }
say "built; image size: $(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"

say "--version:"
"${RUN[@]}" "$IMAGE" --version
"${RUN[@]}" --entrypoint cat "$IMAGE" /version
"${RUN[@]}" --entrypoint python3 "$IMAGE" -c \
  "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU available:', torch.cuda.is_available())"

DATA=$(mktemp -d "$CACHE/run.XXXX")
mkdir -p "$DATA/out" "$DATA/work"
chmod -R 777 "$DATA"
say "simulating a tiny dataset inside the container ..."
"${RUN[@]}" -v "$DATA:/data" --entrypoint harmonize_bids-simulate "$IMAGE" \
  --protocols siemens3tmprage,clinical15tthick --n-anatomies 1 --resolution 3 /data/ds
chmod -R a-w "$DATA/ds"   # the input is read-only, as on a real archive

say "participant level (read-only root, no network, uid 1000) ..."
"${RUN[@]}" -v "$DATA/ds:/data:ro" -v "$DATA/out:/out" -v "$DATA/work:/work" "$IMAGE" \
  /data /out participant -w /work --target-site siemens3tmprage --sloppy --nprocs 2 \
  --omp-nthreads 1 --random-seed 0

say "checking outputs ..."
for sub in a01s01 a01s02; do
  for f in desc-preproc_T1w desc-brain_mask space-MNI152NLin2009aSym_desc-harmonized_T1w \
           desc-harmonized_T1w; do
    ls "$DATA/out/sub-$sub/anat/sub-${sub}_"*"${f}.nii.gz" > /dev/null
  done
done
python3 - "$DATA/out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
desc = json.loads((out / "dataset_description.json").read_text())
assert desc["GeneratedBy"][0]["Container"]["Type"] == "docker", desc["GeneratedBy"]
side = json.loads(next(out.glob("sub-a01s02/anat/*desc-harmonized_T1w.json")).read_text())
assert side["TargetSite"] == "siemens3tmprage", side
assert side["SliceLevelsEqualized"] is True, side  # the default since session 17
print("outputs and sidecars ok:", len(list(out.rglob("*.nii.gz"))), "images")
PY
"${RUN[@]}" -v "$DATA/out:/out:ro" --entrypoint bids-validator-deno "$IMAGE" /out \
  > "$CACHE/validator.txt" 2>&1 || { cat "$CACHE/validator.txt"; exit 1; }
say "BIDS validator: ok"
say "done: image $IMAGE verified"
