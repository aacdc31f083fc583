"""``python -m iuq_d2.engine.slurm``: what slurm/train.sbatch runs on each node (``--on-node``)."""

from .submit import main

main()
