#!/usr/bin/env bash
# The main job on the shipped MNIST checkpoint, from a fresh machine:
#   1. set up (or reuse) both cached environments;
#   2. generate a grid of images with the Norse model at its tuned settings;
#   3. export the model to NIR, verify the re-imported graph, print node counts;
#   4. generate 2 images in Lava (every spiking layer as Lava processes,
#      floating_pt) and check them spike for spike against Norse;
#   5. print the energy of the generated images (from their real spikes).
# Outputs go to ${1:-out/demo}. Set DATA_ROOT for the encoder's real test
# images (default ../shared/datasets when present).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
out="${1:-out/demo}"; mkdir -p "$out"
data_root="${DATA_ROOT:-${SPIKEDIFF_DATA_ROOT:-../shared/datasets}}"
py="$SPIKEDIFF_PY"

echo "== 1. sample 16 images (Norse, spikediff/weights/mnist.pt at its tuned settings)"
"$py" -m spikediff sample --n 16 --seed 0 --out "$out/samples.png" --npz "$out/samples.npz" --force
echo "== 2. export to NIR and verify the re-imported graph"
"$py" -m export --to nir --out "$out/model.nir" --verify --force
# All 49 sampling steps, so the images are real digits; the checkpoint's 40
# refinement steps are left out here: in Lava's CPU simulation each denoiser
# call takes about a second, and they would double the time.
echo "== 3. Lava: 2 images, all 49 sampling steps, floating_pt, checked against Norse (~2 min)"
"$py" -m hardware.run --backend lava --nir "$out/model.nir" --n 2 --refine-steps 0 --compare \
    --out "$out/lava.png" --json "$out/parity.json" --force --no-progress
echo "== 4. energy of 64 generated images"
energy_args=(--n 64 --seed 0 --json "$out/energy.json" --plot "$out/energy.png" --force --no-progress)
[ -d "$data_root" ] && energy_args+=(--data-root "$data_root")
"$py" -m hardware.energy report "${energy_args[@]}"
echo "outputs in $out/"
