#!/usr/bin/env bash
# Deep linear networks at a generic point (λ(w*) exact at any size) with 10⁴ and 10⁵ weights, on a
# GPU: long chains from w* at fixed settings, at γ = 100 (the flat directions relax in 2/(εγ) steps,
# well inside the run) against γ = 1 (they do not: the chains keep spreading). Logs under $OUT.
#   OUT=out bash studies/dln_scale_gpu.sh            # ~5 min on an H100
set -u
OUT=${OUT:-dln_scale_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
long=(studies/dln_long_chains.py --point generic --sampler sgld --device cuda --burn-in 0)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/device.txt"
# 102,400 weights (widths 160 × 5, λ = 12,800): ε one rung under the calibration's top, batch 8,192
timeout "${T1:-200}" "$py" "${long[@]}" --widths 160,160,160,160,160 --rank 160 \
    --epsilon 1e-6 --batch 8192 --draws 40000 --gamma 100,1 2>&1 | tee "$OUT/long_160x5.txt"
# 10,000 weights (widths 50 × 5, λ = 1,250) at its calibration's chosen cell (ε = 2.0e-6, batch 8,192)
timeout "${T2:-120}" "$py" "${long[@]}" --widths 50,50,50,50,50 --rank 50 \
    --epsilon 2e-6 --batch 8192 --draws 40000 --gamma 100 2>&1 | tee "$OUT/long_50x5.txt"
