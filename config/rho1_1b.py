# Rho-1 weighted MTP (Lin et al. 2024: weight tokens by the excess loss over a reference) on a
# real ~1B model with 4 heads (Gloeckle et al. 2024 used n = 4 for code).
# Weights: meta-llama/Llama-3.2-1B (Hugging Face, Llama architecture: 16 blocks, D = 2048,
# 32 query / 8 kv heads of 64, SwiGLU 8192, rope 'llama3' x32, tied embeddings, the 128,256-
# token Llama 3 tokenizer). Why not deepseek-coder-1.3b-base, the stronger code model: its
# tokenizer.json chains several Split pre-tokenizers, which no single tiktoken regex
# reproduces, so tokenization.py refuses it (that is the rule the converter applies; the real
# file could not be fetched here to confirm). Llama 3.2's tokenizer converts exactly, and its natural Rho-1 reference,
# Llama-3.1-8B, shares it (same ranks, specials and regex: the identity check passes).
# Commands, in order (an online machine with the licence accepted fetches the weights once):
#   huggingface-cli download meta-llama/Llama-3.2-1B --local-dir data_cache/Llama-3.2-1B
#   python pretrained.py info data_cache/Llama-3.2-1B
#   python prepare.py --dataset=code_contests --n_samples=100000 --tokenizer=data_cache/Llama-3.2-1B \
#       --data_dir=data_cache/code_contests-llama3
#   huggingface-cli download meta-llama/Llama-3.1-8B --local-dir data_cache/Llama-3.1-8B
#   torchrun --standalone --nproc_per_node=8 train.py config/rho1_1b.py
# The checkpoint's 16 blocks become 15 trunk blocks + head 1; heads 2-4 start as copies of
# its last block (head_init='copy', pretrained.py). The shape comes from the checkpoint.
# The reference scores the training data once (ref_ce_mode='cache', before training starts):
#   8B in bf16 = 16 GB on one GPU, freed before the model below is built.
# Why this reference: Rho-1's is a model of the target distribution; the proposal's code used
# a smaller model with the same tokenizer fine-tuned on the correct solutions, but no Llama 3
# model is smaller than 1B. The 8B is the strongest one sharing the tokenizer; the recipe of
# the tiny setting (the base fine-tuned on the correct solutions) is
# --ref_init_from=out/baseline_1b (this config's baseline run, once trained).
# Data and budget, the proposal's (sec. 5.1-5.2): CodeContests train, Python 3 solutions,
# 100,000 samples (prepare.py --n_samples; at most 10 correct + 10 incorrect per problem),
# decontaminated against HumanEval, MBPP, GSM8K, MATH and CodeContests valid/test (sources.py's
# content-word 3-gram rule); this arm reads its correct solutions (train_on='correct'), 3 epochs.
# Steps = ceil(epochs x samples / 256 rows a step), derived at start (max_epochs); the dry run
# prints them and the tokens from the prepared split. For scale: at a 50% correct share and
# ~600 tokens a sample, 3 epochs of 50,000 correct samples = 586 steps, ~90M tokens;
# the critic's 0.5 + 2.5 epochs of 100,000 = 196 + 977 steps, ~180M tokens.
# Evaluation: MBPP, HumanEval and CodeContests test (eval.py's harness-parity presets).
#
# Memory per GPU, from estimate.py (its docstring says how each part is counted); the dry run
# prints and checks it: WORLD_SIZE=8 DEVICE_MEMORY_GB=80 python train.py config/rho1_1b.py --dry_run=True
#   parameters: 1.418B (1.156B in 19 blocks, embedding 263M, tied)
#   memory per GPU, GiB: weights 5.3, grads 5.3, optimizer 10.6, activations 5.0, loss 0.1, frozen 0.0 -> 26.3 (ddp, 8 GPU(s), activation_checkpointing=none)
# The reference scores the data once before training (ref_ce_mode='cache') and is freed: not resident.
# 2 rows x 2048 block x 16 accum x 8 GPUs = 524,288 tokens per step at most (rows are padded
# samples, so real tokens are fewer)
out_dir = "out/rho1_1b"
init_from = "data_cache/Llama-3.2-1B"
tokenizer = "data_cache/Llama-3.2-1B"
data_dir = "data_cache/code_contests-llama3"
weighting = "rho1"
train_on = "correct"
ref_init_from = "data_cache/Llama-3.1-8B"   # same tokenizer as init_from
ref_ce_mode = "cache"
n_future = 4
head_init = "copy"
block_size = 2048
batch_size = 2
gradient_accumulation_steps = 128  # micro-batches per step over all 8 processes: 16 each
max_epochs = 3.0                   # the proposal's budget (header): steps from the prepared split
warmup_iters = 100
learning_rate = 2e-5               # fine-tuning a pretrained model: ~1/10 of pre-training's peak
min_lr = 2e-6
weight_decay = 0.1
eval_interval = 250
log_interval = 10
dtype = "bfloat16"
compile = True
