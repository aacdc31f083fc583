#!/bin/bash
# The mechanism behind run_ablation_v9.sh and later at 8 images per step: every final checkpoint
# of the 8-image runs found under output/ablation_v2 (benchmarks/run_mechanism.sh), JSON per
# checkpoint and the summary in benchmarks/results/mechanism_ims8/.
set -e
cd "$(dirname "$0")/.."
bash benchmarks/run_mechanism.sh benchmarks/results/mechanism_ims8 "*IMS_PER_BATCH_8*_seed[0-9]"
