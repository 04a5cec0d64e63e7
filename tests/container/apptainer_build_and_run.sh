#!/usr/bin/env bash
# Convert the podman-built image into an Apptainer SIF with singularity.def and run
# it as cluster users do: --cleanenv, bind mounts, not root, then check the outputs.
#
#   bash tests/container/apptainer_build_and_run.sh [CACHE_DIR]
#
# Needs the image of tests/container/build_and_run.sh (localhost/harmonize_bids:latest).
# Uses `apptainer` from PATH when there is one.  Otherwise (Debian bookworm packages no
# Apptainer, and the sid package needs a newer glibc) it debootstraps Debian sid,
# installs its `apptainer` package there and runs Apptainer inside that root with
# podman, unprivileged (uid 1000, user namespaces): Apptainer refuses a plain chroot,
# and this sandbox withholds a capability that root-mode Apptainer asks for.
# Measured on 2 cores (2026-11-25): sid root 26 s + apptainer install 5 s,
# podman save 29 s, SIF build 70 s (see docs/containers.md for the whole run).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${1:-/tmp/harmonize_bids_container}
IMAGE=localhost/harmonize_bids:latest
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

podman image exists "$IMAGE" || { echo "no $IMAGE: run tests/container/build_and_run.sh first"; exit 1; }

# Work happens in $SHARE, seen as $S by apptainer (wherever it runs).
if command -v apptainer > /dev/null; then
  SHARE=$CACHE/apptainer
  mkdir -p "$SHARE"
  S=$SHARE   # the folder as apptainer sees it
  apptainer() { (cd "$SHARE" && command apptainer "$@"); }
else
  ROOT=$CACHE/sid-apptainer
  if [ ! -x "$ROOT/usr/bin/apptainer" ]; then
    say "no apptainer here: debootstrap Debian sid and install its apptainer package ..."
    rm -rf "$ROOT"
    debootstrap --variant=minbase --include=ca-certificates sid "$ROOT" \
      http://deb.debian.org/debian > "$CACHE/debootstrap-sid.log"
    cp /etc/resolv.conf "$ROOT/etc/"
    printf '127.0.0.1 localhost\n::1 localhost\n' > "$ROOT/etc/hosts"
    # a snapshot mirror's Release file may be past its Valid-Until date
    chroot "$ROOT" bash -c "apt-get -o Acquire::Check-Valid-Until=false update -q && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      apptainer e2fsprogs" > "$CACHE/apptainer-install.log"
  fi
  SHARE=$ROOT/share
  S=/share
  mkdir -p "$SHARE"
  chmod 1777 "$SHARE" "$ROOT/tmp"
  apptainer() {
    podman run --rm --runtime runc --privileged -u 1000:1000 -e HOME=/tmp -w /share \
      --ulimit "nofile=$(ulimit -n):$(ulimit -n)" --ulimit nproc=4096:4096 \
      --network none --rootfs "$ROOT" apptainer "$@"
  }
fi
apptainer --version

say "podman save $IMAGE -> docker-archive ..."
rm -f "$SHARE/harmonize_bids.tar" "$SHARE/harmonize_bids.sif"
podman save --format docker-archive -o "$SHARE/harmonize_bids.tar" "$IMAGE"
cp "$REPO/singularity.def" "$SHARE/singularity.def"
chmod a+r "$SHARE"/*

say "apptainer build (singularity.def, BOOTSTRAP=docker-archive; runs its %test) ..."
apptainer build --build-arg BOOTSTRAP=docker-archive --build-arg FROM=$S/harmonize_bids.tar \
  $S/harmonize_bids.sif $S/singularity.def > "$CACHE/apptainer-build.log" 2>&1 \
  || { tail -30 "$CACHE/apptainer-build.log"; exit 1; }
rm -f "$SHARE/harmonize_bids.tar"
say "built: $(du -h "$SHARE/harmonize_bids.sif" | cut -f1)"
apptainer inspect --labels $S/harmonize_bids.sif | grep -i version

say "apptainer run --version:"
apptainer run --cleanenv $S/harmonize_bids.sif --version

rm -rf "$SHARE/run" && mkdir -p "$SHARE/run/out" "$SHARE/run/work" && chmod -R 777 "$SHARE/run"
say "simulating a tiny dataset with the SIF ..."
apptainer exec --cleanenv -B $S/run:/data $S/harmonize_bids.sif harmonize_bids-simulate \
  --protocols siemens3tmprage,clinical15tthick --n-anatomies 1 --resolution 3 /data/ds \
  > "$CACHE/apptainer-simulate.log" 2>&1 || { tail -20 "$CACHE/apptainer-simulate.log"; exit 1; }
chmod -R a-w "$SHARE/run/ds"

say "participant level (--cleanenv, input bound read-only, not root) ..."
apptainer run --cleanenv -B $S/run/ds:/data:ro -B $S/run/out:/out \
  -B $S/run/work:/work $S/harmonize_bids.sif /data /out participant -w /work \
  --target-site siemens3tmprage --sloppy --nprocs 2 --omp-nthreads 1 --random-seed 0

say "checking outputs ..."
OUT=$SHARE/run/out
for sub in a01s01 a01s02; do
  for f in desc-preproc_T1w desc-brain_mask space-MNI152NLin2009aSym_desc-harmonized_T1w \
           desc-harmonized_T1w; do
    ls "$OUT/sub-$sub/anat/sub-${sub}_"*"${f}.nii.gz" > /dev/null
  done
done
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
desc = json.loads((out / "dataset_description.json").read_text())
assert desc["GeneratedBy"][0]["Container"]["Type"] == "singularity", desc["GeneratedBy"]
side = json.loads(next(out.glob("sub-a01s02/anat/*desc-harmonized_T1w.json")).read_text())
assert side["TargetSite"] == "siemens3tmprage", side
print("outputs and sidecars ok:", len(list(out.rglob("*.nii.gz"))), "images")
PY
apptainer exec --cleanenv -B $S/run/out:/out:ro $S/harmonize_bids.sif \
  bids-validator-deno /out > "$CACHE/apptainer-validator.txt" 2>&1 \
  || { cat "$CACHE/apptainer-validator.txt"; exit 1; }
say "BIDS validator: ok"
say "done: $SHARE/harmonize_bids.sif verified"
