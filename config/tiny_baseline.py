# The embedded default: baseline MTP (w = 1) on tinycode, a ~1M-parameter byte-level
# model, 2 heads, CPU. Identical to `python train.py` with no arguments.
#   python train.py config/tiny_baseline.py
# Expected: see README "Measured" (val loss per head, wall time on 2 CPU cores).
# 16 rows * 1 micro-batch = 16 samples (~1,500 tokens) per step, 600 steps.
out_dir = "out/tiny_baseline"
weighting = "uniform"
train_on = "correct"
