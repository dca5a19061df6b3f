#!/usr/bin/env bash
# The committed disk campaign: one run file per shape in validation/measured/disk/ (capsim measure-disk).
# Usage: validation/measured/disk/run_disk.sh [shape ...]   (default: olmoe-like mixtral-like; from the repository
# root; ~1 min per shape). DIR=<folder> puts the experts file on another drive (default: the temporary directory).
set -euo pipefail
THREADS=${THREADS:-1}
NOTES=${NOTES:-"2-core CPU shared with other jobs; torch on 1 thread (provenance.host_load gives the other load \
during the run). The experts file is on the VM's root disk (a virtio block device, see storage); its rates are \
those of that virtual disk, not of a datasheet NVMe drive."}
shapes=("$@")
[ ${#shapes[@]} -eq 0 ] && shapes=(olmoe-like mixtral-like)
for s in "${shapes[@]}"; do
  capsim measure-disk --model "validation/measured/shapes/$s.json" --random-init --batches 1,4,16 --context 128 \
    --repeats 5 --warmup 1 --page-batches 1 --page-repeats 3 --dtype float32 --threads "$THREADS" --seed 0 \
    ${DIR:+--dir "$DIR"} --notes "$NOTES" --out "validation/measured/disk/$s.json"
done
