"""Slurm launcher: one task per node, :func:`iuq_d2.engine.entry.run` inside it, requeue on
preemption.

:mod:`.rendezvous` derives each node's place in the job from Slurm's environment, :mod:`.node`
runs and requeues a node's share, :mod:`.submit` is the command line of slurm/submit.py.
"""
