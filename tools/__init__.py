"""Analysis of trained checkpoints beyond COCO AP (cross-image firing, the mask-error budget).
It imports iuq_d2 and is never imported by it; run its scripts from the repository root with
``python -m tools.<script>``."""
