# The embedded default: baseline MTP (w = 1) on tinycode (arithmetic + strings, single-digit
# constants), a ~0.6M-parameter byte-level model (1 trunk block + 2 head blocks), CPU.
# Identical to `python train.py` with no arguments.
#   python train.py config/tiny_baseline.py
# Expected: see README "Measured" (val loss per head, wall time on 2 CPU cores).
# 8 rows * 1 micro-batch = 8 samples (~650 tokens) per step, 1200 steps (~3 epochs).
out_dir = "out/tiny_baseline"
weighting = "uniform"
train_on = "correct"
