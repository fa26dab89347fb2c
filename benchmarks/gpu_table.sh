#!/usr/bin/env bash
# The CUDA checks (tests/test_cuda.py), issue #6's table on CUDA with AMP (eager and compiled),
# and the same models against timm, in one command for a session lent the GPU machine (the
# device tool), from the repository root:
#
#   bash benchmarks/gpu_table.sh
#
# Nothing to install: that machine's python3 has torch, timm, tqdm, safetensors and matplotlib,
# and mobileconv is read from src/. Results go to $OUT (the folder the device tool sends back),
# else to benchmarks/results. Each step has its own time limit, so a slow step still leaves the
# other steps' files; the four together stay under 9.5 minutes, inside one 10-minute call.
set -uo pipefail
out=${OUT:-benchmarks/results}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())' || exit 1

step() {
    local limit=$1
    shift
    echo "== $* (limit ${limit} s)"
    timeout "$limit" "$@" || echo "== exit $? from: $*"
}

# correctness on CUDA first: fast vs reference operators, optimize_for_inference, an AMP step
step 60 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
# the whole table, eager: inference (batch 32), batch-1 latency, training step, MACs/s parity
step 150 python3 benchmarks/mixconv_speed.py --device cuda --amp --no-compiled --out "$out"
# mobileconv against timm's own models, same weights
step 100 python3 benchmarks/vs_timm.py --device cuda --amp --out "$out"
# compiled (torch.compile, Inductor) inference and latency: one MixNet and the XSep model
step 240 python3 benchmarks/mixconv_speed.py --device cuda --amp --scenarios infer latency --models mixnet_s xsep_mobilenetv3_small_100 --out "$out"
