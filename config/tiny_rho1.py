# Rho-1 weighted MTP on tinycode: w = softmax(|CE_ref - CE_model| / T) over the heads at
# each position, T = 1. Needs the base and the reference first:
#   python train.py config/tiny_base.py
#   python train.py config/tiny_ref.py
#   python train.py config/tiny_rho1.py
# The reference's per-token CE is scored once into data_cache/tinycode/train/ref_ce-*.bin.
# Same budget as tiny_baseline: 500 steps of 8 correct solutions from the base.
out_dir = "out/tiny_rho1"
init_from = "out/tiny_base"
weighting = "rho1"
ref_init_from = "out/tiny_ref"
train_on = "correct"
temperature = 1.0
min_ce_diff = 0.0
max_iters = 500
lr_decay_iters = 500
learning_rate = 2e-3
min_lr = 2e-4
