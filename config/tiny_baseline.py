# Baseline MTP (w = 1) on tinycode: fine-tunes the tiny base model on the correct
# solutions of all five families.
#   python train.py config/tiny_base.py
#   python train.py config/tiny_baseline.py
# Expected: see README "Measured" (val loss per head, pass@1, wall time on 2 CPU cores).
# 8 rows * 1 micro-batch = 8 samples (~800 tokens) per step, 500 steps (~1.9 epochs).
out_dir = "out/tiny_baseline"
init_from = "out/tiny_base"
weighting = "uniform"
train_on = "correct"
max_iters = 500
lr_decay_iters = 500
learning_rate = 2e-3
min_lr = 2e-4
