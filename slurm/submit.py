#!/usr/bin/env python3
"""Submit iuq_d2 training to Slurm through submitit (see docs/slurm.md).

    python slurm/submit.py --nodes 2 --gpus-per-node 8 --partition gpu -- \
        --config-file configs/IUQ-CondInst/MS_R_50_1x.yaml OUTPUT_DIR output/iuq_r50

Installed packages also get the same command as ``iuq_d2-slurm``.
"""

import sys
from pathlib import Path

# Run from a checkout without installing: the package sits next to this folder.
REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from iuq_d2.engine.slurm.submit import main  # noqa: E402

if __name__ == "__main__":
    main()
