# Verifiable Critic weighted MTP on Meta's 7B multi-token model: a value head on the trunk
# learns is_correct; w[t,k] ~ |whitened TD error|. Weights: facebook/multi-token-prediction, folder 7B_1T_4 (Gloeckle et al.
# 2024: 7B trained on 1T tokens of code with n = 4 heads; params.json + consolidated.pth in
# Meta's own layout, Llama 2's 32,000-token sentencepiece tokenizer.model at the top level).
# Its 4 trained heads load as they are (n_future comes from params.json n_future_tokens).
# Commands, in order (an online machine with the licence accepted fetches the weights once):
#   huggingface-cli download facebook/multi-token-prediction --include "7B_1T_4/*" "tokenizer.model" \
#       --local-dir data_cache/mtp
#   python pretrained.py info data_cache/mtp/7B_1T_4
#   python prepare.py --dataset=code_contests --n_samples=100000 --tokenizer=data_cache/mtp/tokenizer.model \
#       --data_dir=data_cache/code_contests-llama2
#   torchrun --standalone --nproc_per_node=8 train.py config/critic_7b.py
# The value head is new: 4096 x 4099 + 4096 = 16.8M params, 0.27 GB with grads and AdamW.
# Data and budget, the proposal's (sec. 5.1-5.2): CodeContests train, Python 3 solutions,
# 100,000 samples (prepare.py --n_samples; at most 10 correct + 10 incorrect per problem),
# decontaminated against HumanEval, MBPP, GSM8K, MATH and CodeContests valid/test (sources.py's
# content-word 3-gram rule); this arm reads correct and incorrect solutions (train_on='all'):
# 0.5 epoch of value pre-training (critic_pretrain_epochs), then 2.5 epochs of main training.
# Steps = ceil(epochs x samples / 128 rows a step), derived at start (max_epochs); the dry run
# prints them and the tokens from the prepared split. For scale: at a 50% correct share and
# ~600 tokens a sample, 3 epochs of 50,000 correct samples = 1,172 steps, ~90M tokens;
# the critic's 0.5 + 2.5 epochs of 100,000 = 391 + 1,954 steps, ~180M tokens.
# Evaluation: MBPP, HumanEval and CodeContests test (eval.py's harness-parity presets).
#
# Memory per GPU, from estimate.py (its docstring says how each part is counted); the dry run
# prints and checks it: WORLD_SIZE=8 DEVICE_MEMORY_GB=80 python train.py config/critic_7b.py --dry_run=True
#   parameters: 6.755B (6.476B in 32 blocks, embedding 131M, output 131M, value head 16.8M)
#   memory per GPU, GiB: weights 3.1, grads 3.1, optimizer 6.3, activations 17.0, loss 0.1, frozen 0.0 -> 29.7 (fsdp, 8 GPU(s), activation_checkpointing=none)
# Under DDP every GPU would hold the weights, grads and AdamW state of 6.74B parameters
# (16 B each: 100 GiB): FSDP2 shards them over the 8 GPUs (data_parallel below).
# 2 rows x 2048 block x 8 accum x 8 GPUs = 262,144 tokens per step (at most)
out_dir = "out/critic_7b"
init_from = "data_cache/mtp/7B_1T_4"
tokenizer = "data_cache/mtp/tokenizer.model"
data_dir = "data_cache/code_contests-llama2"
weighting = "critic"
train_on = "all"
critic_pretrain_epochs = 0.5
value_coef = 0.5
value_detach = True
value_surprise = False             # a pretrained state carries the signal; surprise adds none (docs/method.md)
n_future = 4                       # = the checkpoint's n_future_tokens (a mismatch is refused)
block_size = 2048
data_parallel = "fsdp"               # FSDP2 per block: 6.74B x 16 B does not fit one GPU
batch_size = 2
gradient_accumulation_steps = 64   # micro-batches per step over all 8 processes: 8 each
max_epochs = 2.5                   # the proposal's budget (header): steps from the prepared split
warmup_iters = 50
learning_rate = 1e-5
min_lr = 1e-6
weight_decay = 0.1
eval_interval = 250
log_interval = 10
dtype = "bfloat16"
compile = True
