#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the CUDA tests, then each engine's GPU figures.
#
# Usage: bash benchmarks/run_gpu.sh OUTDIR [tests] [nsn2n] [denoisplit] [self2seg] [self2seg-quick]
#                                          [denoisplit-quality]
#
# Runs from the repository root with a python3 that has torch (CUDA), numpy, scipy,
# scikit-image, tifffile, safetensors and matplotlib; the package is taken from src/
# (no install).  Real images come from ../shared/data, or from a copy in .gpudata/.
set -u
out=${1:?usage: run_gpu.sh OUTDIR [parts...]}
shift
parts=${*:-tests nsn2n denoisplit self2seg}
mkdir -p "$out"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
if [ ! -d ../shared/data ] && [ -d .gpudata ]; then
    mkdir -p ../shared && ln -s "$PWD/.gpudata" ../shared/data
fi
log=$out/gpu_run.log
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, \
torch.cuda.get_device_name(), 'cpus', __import__('os').cpu_count())"
} 2>&1 | tee -a "$log"
for part in $parts; do
    echo "=== $part $(date +%T)" | tee -a "$log"
    case $part in
        tests) python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider ;;
        nsn2n) python3 benchmarks/nsn2n.py --device cuda --timing-only ;;
        denoisplit) python3 benchmarks/denoisplit.py --device cuda --skip-quality ;;
        self2seg) python3 benchmarks/self2seg.py --device cuda --methods self2seg seq ;;
        self2seg-quick) python3 benchmarks/self2seg.py --device cuda --quick --no-synthetic \
            --methods self2seg seq ;;
        denoisplit-quality) python3 benchmarks/denoisplit.py --device cuda --skip-speed \
            --max-minutes "${DUET_GPU_MINUTES:-3}" ;;
        *) echo "unknown part: $part" ;;
    esac 2>&1 | tee -a "$log"
    cp benchmarks/results/*.json "$out"/ 2>/dev/null  # after each part: a later one may time out
done
ls "$out"
