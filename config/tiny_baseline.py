# The embedded default: baseline MTP (w = 1) on tinycode, a ~1M-parameter byte-level
# model, 2 heads, CPU. Identical to `python train.py` with no arguments.
#   python train.py config/tiny_baseline.py
# Expected: see README "Measured" (val loss per head, wall time on 2 CPU cores).
# 16 rows * 2 micro-batches = 32 samples (~2,900 tokens) per step.
out_dir = "out/tiny_baseline"
weighting = "uniform"
train_on = "correct"
