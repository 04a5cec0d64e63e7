#!/usr/bin/env bash
# The checks and timings a session with a GPU should run, in order of value, each
# writing into OUT_DIR as soon as it finishes (so a run cut short keeps what it did):
#   1. the CUDA tests (tests/test_cuda.py: reproducible sampling, CPU agreement, bf16
#      training, participant and torchrun group levels with --device cuda);
#   2. harmonization time per volume and against volume size on CUDA
#      (speed_and_memory.py sections A and D);
#   3. training step time and GPU memory (training_memory.py --device cuda);
#   4. the participant level, preprocessing on the CPU and harmonization on the GPU
#      (speed_and_memory.py section C, one subject).
# Usage (from the repository root, the package importable):
#   bash benchmarks/gpu_session.sh OUT_DIR
# docs/gpu.md says how a session without pip access there makes the package importable.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    | tee -a "$out/gpu.txt"
python3 -m pytest -q -rA -s -p no:cacheprovider tests/test_cuda.py 2>&1 \
    | tee "$out/cuda_tests.log" || status=1
python3 benchmarks/speed_and_memory.py --devices cuda --sections A D \
    --out-dir /tmp/hb_speed --results "$out/speed_and_memory_gpu.md" || status=1
python3 benchmarks/training_memory.py --device cuda \
    --configs 64x12 64x48 128x64 --results "$out/training_memory_gpu.md" || status=1
python3 benchmarks/speed_and_memory.py --devices cuda --sections C --subjects 1 \
    --out-dir /tmp/hb_speed --results "$out/speed_participant_gpu.md" || status=1
exit "$status"
