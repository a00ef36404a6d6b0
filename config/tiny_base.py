# The tiny setting's base model: every arm (and the Rho-1 reference) fine-tunes it.
# Canonical solutions of two tinycode families (arithmetic, strings; the 'pretrain' split,
# disjoint from train/val/test), where a tiny model learns to copy constants from the
# description into the code; the arms then fine-tune on all five families.
#   python train.py config/tiny_base.py
# 16 samples per step, 1200 steps (~5 epochs of 4000 solutions), ~3 min on one core.
out_dir = "out/tiny_base"
train_split = "pretrain"
train_on = "correct"
batch_size = 16
max_iters = 1200
lr_decay_iters = 1200
learning_rate = 4e-3
min_lr = 3e-4
