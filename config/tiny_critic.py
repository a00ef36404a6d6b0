# Verifiable Critic weighted MTP on tinycode: a value head learns is_correct from correct
# and incorrect solutions; w[t,k] ∝ |whitened k-step TD error|.
#   python train.py config/tiny_base.py
#   python train.py config/tiny_critic.py
# Value pre-training for 0.5 epoch of the critic's data (the LM waits), then the same 500
# main steps of 8 samples from the base as tiny_baseline, with value_coef * value loss added.
out_dir = "out/tiny_critic"
init_from = "out/tiny_base"
weighting = "critic"
train_on = "all"
critic_pretrain_epochs = 0.5
gamma = 1.0
lam = 0.95
value_coef = 0.5
incorrect_mode = "weighted"
max_iters = 500
lr_decay_iters = 500
learning_rate = 2e-3
min_lr = 2e-4
