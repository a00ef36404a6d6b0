# Verifiable Critic weighted MTP on Meta's 7B multi-token model: a value head on the trunk
# learns is_correct; w[t,k] ~ |whitened TD error|. Weights: facebook/multi-token-prediction, folder 7B_1T_4 (Gloeckle et al.
# 2024: 7B trained on 1T tokens of code with n = 4 heads; params.json + consolidated.pth in
# Meta's own layout, Llama 2's 32,000-token sentencepiece tokenizer.model at the top level).
# Its 4 trained heads load as they are (n_future comes from params.json n_future_tokens).
# Commands, in order (an online machine with the licence accepted fetches the weights once):
#   huggingface-cli download facebook/multi-token-prediction --include "7B_1T_4/*" "tokenizer.model" \
#       --local-dir data_cache/mtp
#   python pretrained.py info data_cache/mtp/7B_1T_4
#   python prepare.py --tokenizer=data_cache/mtp/tokenizer.model --data_dir=data_cache/tinycode-llama2
#   torchrun --standalone --nproc_per_node=8 train.py config/critic_7b.py
# The value head is new: 4096 x 4099 + 4096 = 16.8M params, 0.27 GB with grads and AdamW.
#
# Memory per GPU (8 x 80 GB), fp32 weights + bf16 autocast:
#   params: 32 blocks (28 trunk + 4 heads) x (4 x 4096^2 + 3 x 4096 x 11008 = 202.4M) = 6.48B
#           + embedding and unembedding 2 x 32000 x 4096 = 0.26B                     -> 6.74B
#   weights 4 B + grads 4 B + AdamW 8 B = 16 B/param x 6.74B = 107.8 GB: DOES NOT FIT under
#   train.py's DDP (every GPU holds everything). It needs fully sharded data parallelism
#   (FSDP2 / ZeRO-3, not yet in train.py): 107.8 / 8 = 13.5 GB per GPU, plus one gathered
#   block in bf16 at a time (0.4 GB).
#   activations with per-block activation checkpointing: the block inputs, 2 B x D x 32 blocks
#     = 262 KB/token, x 2 x 2048 tokens = 1.1 GB, plus one block recomputed (34 x D = 139 KB
#     per token: 0.6 GB); without checkpointing 34 x 4096 x 32 = 4.5 MB/token x 4096 = 18.3 GB.
#   logits (B, T, H, V): 4096 x 4 x 32000 x (2 + 4 + 4 B) = 5.2 GB
#   total with FSDP and no checkpointing ~37 GB; with checkpointing ~20 GB.
# 2 rows x 2048 block x 8 accum x 8 GPUs = 262,144 tokens per step (at most)
out_dir = "out/critic_7b"
init_from = "data_cache/mtp/7B_1T_4"
tokenizer = "data_cache/mtp/tokenizer.model"
data_dir = "data_cache/tinycode-llama2"
weighting = "critic"
train_on = "all"
critic_pretrain_epochs = 0.5
value_coef = 0.5
value_detach = True
value_surprise = False             # a pretrained state carries the signal; surprise adds none (docs/method.md)
n_future = 4                       # = the checkpoint's n_future_tokens (a mismatch is refused)
block_size = 2048
batch_size = 2
gradient_accumulation_steps = 64   # micro-batches per step over all 8 processes: 8 each
max_iters = 1000
lr_decay_iters = 1000
warmup_iters = 50
learning_rate = 1e-5
min_lr = 1e-6
weight_decay = 0.1
eval_interval = 250
log_interval = 10
dtype = "bfloat16"
compile = True
