#!/usr/bin/env bash
# Trains the project's checkpoints and measures their quality on a lent GPU
# machine, in three back-to-back calls (each call's upload is capped at 64 MiB,
# so the data sets and the 87 MB FID network travel in pieces):
#   start-a DIR  data sets + norse/nir wheels + FID part 0; starts trainings
#   start-b DIR  more data + FID part 1; starts trainings
#   finish  DIR  FID part 2 (+ CIFAR-10); waits, evaluates, copies results to $OUT
# Each training job runs `spikediff train` then benchmarks/quality.py for its
# data set, in the background (setsid), so the calls return at once.
set -uo pipefail
stage="$1"; src="$2"
repo="$(cd "$(dirname "$0")/.." && pwd)"
W=${W:-/root/sd}; mkdir -p $W/data $W/runs $W/results $W/fid
export SPIKEDIFF_CACHE=$W/cache PYTHONPATH=/tmp/site:$repo PYTHONUNBUFFERED=1
EPOCHS_VQ=${EPOCHS_VQ:-3}; BUDGET_MIN=${BUDGET_MIN:-6}; N=${N:-10000}
PRESET=${PRESET:-default}; DEVICE=${DEVICE:-cuda}

[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --target /tmp/site $W/whl/*.whl 2>/dev/null
[ -d "$src/whl" ] && cp -r "$src/whl" $W/ && python3 -m pip install -q --no-index --no-deps \
    --no-compile --no-cache-dir --target /tmp/site $W/whl/*.whl
[ -d "$src/data" ] && cp -r "$src"/data/* $W/data/
cp "$src"/fid.part* $W/fid/ 2>/dev/null

job() {  # dataset, extra train args...
    local ds="$1"; shift
    ( cd "$repo"
      python3 -m spikediff train --dataset "$ds" --data-root $W/data --out $W/runs/$ds \
          --preset $PRESET --epochs-vq $EPOCHS_VQ --epochs-denoiser 1000 \
          --time-budget $BUDGET_MIN --device $DEVICE --no-progress "$@"
      while [ ! -f $W/fid/ready ]; do sleep 2; done
      python3 benchmarks/quality.py --data-root $W/data --device $DEVICE --n $N \
          --fid-weights $W/fid/default_1.pt --results $W/results "$ds=$W/runs/$ds/checkpoint.pt"
    ) > $W/runs/$ds.log 2>&1 &
}

case "$stage" in
  start-a)
    nvidia-smi --query-gpu=name,memory.total --format=csv
    python3 -c "import norse, nir, torch; print('norse', norse.__version__, 'torch', torch.__version__)"
    for ds in mnist kmnist; do setsid bash -c "$(declare -f job); W=$W repo=$repo \
        EPOCHS_VQ=$EPOCHS_VQ BUDGET_MIN=$BUDGET_MIN N=$N PRESET=$PRESET DEVICE=$DEVICE job $ds" & done
    sleep 20; tail -n 3 $W/runs/*.log ;;
  start-b)
    setsid bash -c "$(declare -f job); W=$W repo=$repo EPOCHS_VQ=$EPOCHS_VQ \
        BUDGET_MIN=$BUDGET_MIN N=$N PRESET=$PRESET DEVICE=$DEVICE job fashion-mnist" &
    sleep 5; tail -n 3 $W/runs/*.log ;;
  finish)
    setsid bash -c "$(declare -f job); W=$W repo=$repo EPOCHS_VQ=$EPOCHS_VQ \
        BUDGET_MIN=$((BUDGET_MIN - 1)) N=$N PRESET=$PRESET DEVICE=$DEVICE job cifar10
    if [ -f "$src/cpu-default.pt" ]; then  # the CPU-trained MNIST run, evaluated alike
        ( while [ ! -f $W/fid/ready ]; do sleep 2; done; cd "$repo"
          python3 benchmarks/quality.py --data-root $W/data --device $DEVICE --n $N \
            --fid-weights $W/fid/default_1.pt --results $W/results \
            "mnist:mnist-cpu=$src/cpu-default.pt" ) > $W/runs/mnist-cpu.log 2>&1 &
    fi" &
    cat $W/fid/fid.part0 $W/fid/fid.part1 $W/fid/fid.part2 > $W/fid/default_1.pt
    echo "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34  $W/fid/default_1.pt" \
        | sha256sum -c && touch $W/fid/ready
    deadline=$(( $(date +%s) + ${WAIT_S:-480} ))
    while [ "$(ls $W/results/quality_*.json 2>/dev/null | wc -l)" -lt 4 ] \
          && [ "$(date +%s)" -lt "$deadline" ]; do sleep 10; done
    tail -n 4 $W/runs/*.log
    python3 - <<PY
import torch
ck = torch.load("$W/runs/mnist/checkpoint.pt", map_location="cpu", weights_only=True)
ck["optimizer"] = None  # shipped weights: no optimizer state
torch.save(ck, "$OUT/mnist-default.pt")
PY
    for ds in mnist fashion-mnist kmnist cifar10; do
        cp "$(ls $W/runs/$ds/samples_e*.png | tail -n 1)" $W/results/${ds}_samples.png
        cp $W/runs/$ds/losses.png $W/results/${ds}_losses.png; cp $W/runs/$ds.log $W/results/
    done 2>/dev/null
    cp $W/runs/mnist-cpu.log $W/results/ 2>/dev/null
    tar czf $OUT/results.tgz -C $W results
    for ds in fashion-mnist kmnist cifar10; do cp $W/runs/$ds/checkpoint.pt $OUT/$ds.pt 2>/dev/null; done
    ls -la $OUT ;;
esac

# Evaluation only, when the trainings above are done (two more uploads):
#   feval-a DIR  wheels + FID parts 0-1 + MNIST test split
#   feval-b DIR  FID part 2 + other test splits + checkpoints; evaluates all four
case "$stage" in
  feval-a) ;;  # the common part above already staged the wheels, data and FID parts
  feval-b)
    cat $W/fid/fid.part0 $W/fid/fid.part1 $W/fid/fid.part2 > $W/fid/default_1.pt
    echo "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34  $W/fid/default_1.pt" \
        | sha256sum -c || exit 1
    cd "$repo"
    for pair in "mnist=spikediff/weights/mnist-default.pt" "fashion-mnist=$src/ckpt/fashion-mnist.pt" \
                "kmnist=$src/ckpt/kmnist.pt" "cifar10=$src/ckpt/cifar10.pt"; do
        python3 benchmarks/quality.py --data-root $W/data --device $DEVICE --n $N --temperatures 1.0 \
            --batch-size 1000 --fid-weights $W/fid/default_1.pt --results $W/results "$pair" \
            > $W/${pair%%=*}.eval.log 2>&1 &
    done
    # Copy each result as soon as it exists: a call that runs past its time
    # limit still returns what is under $OUT (the first try returned nothing).
    while [ -n "$(jobs -r)" ]; do cp $W/results/quality_*.json $OUT/ 2>/dev/null; sleep 5; done
    for f in $W/*.eval.log; do tr '\r' '\n' < $f | grep -v "it/s\|img/s\|tok-step" | tail -n 3; done
    cp $W/results/quality_*.json $OUT/ 2>/dev/null; ls $OUT ;;
esac
