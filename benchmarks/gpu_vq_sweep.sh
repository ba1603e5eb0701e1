#!/usr/bin/env bash
# Which VQ-SVAE change sharpens reconstructions most? (The decoder is the
# quality ceiling: see the README's quality section.) Trains stage 1 only for
# each config in benchmarks/configs/vq/ on MNIST, side by side on one GPU, and
# prints reconstruction MSE / SSIM on the full test split (each training is cut
# off after TRAIN_S seconds, default 150: its last epoch checkpoint counts); the checkpoints come
# back as $OUT/vq-<name>.pt for a reconstruction FID on a CPU
# (eval.reconstruction + metrics). Device call, after `gpu_quality.sh pack`:
#   bash benchmarks/gpu_vq_sweep.sh .gpu/a        (carry .gpu/a)
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: $0 STAGE_DIR (e.g. .gpu/a from gpu_quality.sh pack)" >&2; exit 2; }
src="$1"; repo="$(cd "$(dirname "$0")/.." && pwd)"; W=${W:-/root/sd}; DEVICE=${DEVICE:-cuda}
mkdir -p $W/runs $W/data && cp -r "$src/site" $W/ && cp -r "$src"/data/* $W/data/
export PYTHONPATH=$W/site:$repo PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2; PY=${SPIKEDIFF_PY:-python3}
cd "$repo"
for cfg in benchmarks/configs/vq/*.toml; do n=$(basename $cfg .toml)
    timeout ${TRAIN_S:-150} $PY -m spikediff train --dataset mnist --data-root $W/data --out $W/runs/vq-$n --stage vq \
        --preset default --config $cfg --device $DEVICE --no-progress ${LIMIT:+--limit $LIMIT} \
        > $W/runs/vq-$n.log 2>&1 &
done
wait
$PY - "$W" "$DEVICE" "${OUT:-/tmp}" <<'PY'
import sys
from pathlib import Path

import torch
from spikediff import checkpoint
from spikediff.data import load_images
from spikediff.evaluate import reconstruction
W, dev, out = sys.argv[1:]
test = load_images("mnist", f"{W}/data", "test").images
for n in sorted(p.stem for p in Path("benchmarks/configs/vq").glob("*.toml")):  # as trained above
    try:
        ck = checkpoint.load(f"{W}/runs/vq-{n}/checkpoint.pt")
    except Exception as e:
        log = Path(f"{W}/runs/vq-{n}.log")
        print(n, "failed:", e, log.read_text()[-800:] if log.exists() else ""); continue
    r, _ = reconstruction(checkpoint.model_from(ck), test, dev)
    h = ck["history"]["vq"]
    print(f"{n}: {len(h)} VQ epochs in {ck['seconds']['vq']:.0f} s, train recon loss {h[-1]['recon']:.4f}, "
          f"test MSE {r['mse']:.5f}, SSIM {r['ssim']:.4f}")
    ck["optimizer"] = None
    torch.save(ck, f"{out}/vq-{n}.pt")
PY
