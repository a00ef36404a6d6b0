# The Rho-1 reference for the tiny setting: a plain next-token model (n_future = 1) on
# tinycode's correct solutions, same tokenizer as every arm.
#   python train.py config/tiny_ref.py
# Then config/tiny_rho1.py reads out/tiny_ref/ckpt.pt.
out_dir = "out/tiny_ref"
n_future = 1
train_on = "correct"
