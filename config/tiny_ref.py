# The Rho-1 reference for the tiny setting: the base fine-tuned on tinycode's correct
# solutions (like tiny_baseline, seed 0), same tokenizer as every arm.
#   python train.py config/tiny_base.py
#   python train.py config/tiny_ref.py
# Then config/tiny_rho1.py reads out/tiny_ref/ckpt.pt.
out_dir = "out/tiny_ref"
init_from = "out/tiny_base"
train_on = "correct"
seed = 0
max_iters = 500
lr_decay_iters = 500
learning_rate = 2e-3
min_lr = 2e-4
