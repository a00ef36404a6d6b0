# Uniform (unweighted) MTP fine-tuning of a real ~1B code model with 4 heads: the arm the
# weighted schemes are compared against (Gloeckle et al. 2024 used n = 4 for code).
# Weights: deepseek-ai/deepseek-coder-1.3b-base (Hugging Face, Llama architecture, rope
# 'linear' x4, 32,256-token BPE vocab). Chosen over Llama-3.2-1B because it is a code model
# (HumanEval pass@1 ~35% vs ~18% for the base Llama 3.2 1B), and its 32K vocab keeps the
# (B, T, H, V) logits of 4 heads 4x smaller than Llama 3's 128K; its natural Rho-1 reference,
# deepseek-coder-6.7b-base, shares the tokenizer.
# Commands, in order (an online machine fetches the weights once):
#   huggingface-cli download deepseek-ai/deepseek-coder-1.3b-base --local-dir data_cache/deepseek-coder-1.3b-base
#   python pretrained.py info data_cache/deepseek-coder-1.3b-base
#   python data.py --tokenizer=data_cache/deepseek-coder-1.3b-base --data_dir=data_cache/tinycode-dscoder
#   torchrun --standalone --nproc_per_node=8 train.py config/baseline_1b.py
# The checkpoint's 24 blocks become 23 trunk blocks + head 1; heads 2-4 start as copies of
# its last block (pretrained.py). The model's shape comes from the checkpoint, not from here.
#
# Memory per GPU (8 x 80 GB, DDP: every GPU holds everything), fp32 weights + bf16 autocast:
#   params: 27 blocks x (4 x 2048^2 attn + 3 x 2048 x 5504 SwiGLU = 50.6M) = 1.366B
#           + untied embedding and unembedding 2 x 32256 x 2048 = 0.132B       -> 1.50B
#   weights 4 B + grads 4 B + AdamW m, v 8 B = 16 B/param x 1.50B            = 24.0 GB
#   activations, bf16, no recomputation: ~34 x D bytes per token per block (Korthikanti
#     et al. 2022, flash attention) = 34 x 2048 x 27 = 1.88 MB/token x 4 x 2048 tokens = 15.4 GB
#   logits (B, T, H, V): 8192 x 4 x 32256 x (2 B bf16 + 4 B fp32 CE + 4 B its grad) = 10.6 GB
#   total ~50 GB of 80 GB; the remainder is headroom for fragmentation and eval.
# 4 rows x 2048 block x 4 accum x 8 GPUs = 262,144 tokens per step (at most: rows are padded samples)
out_dir = "out/baseline_1b"
init_from = "data_cache/deepseek-coder-1.3b-base"
tokenizer = "data_cache/deepseek-coder-1.3b-base"
data_dir = "data_cache/tinycode-dscoder"
weighting = "uniform"
n_future = 4
block_size = 2048
batch_size = 4
gradient_accumulation_steps = 32   # micro-batches per step over all 8 processes: 4 each
max_iters = 2000
lr_decay_iters = 2000
warmup_iters = 100
learning_rate = 2e-5               # fine-tuning a pretrained model: ~1/10 of pre-training's peak
min_lr = 2e-6
weight_decay = 0.1
eval_interval = 250
log_interval = 10
dtype = "bfloat16"
compile = True
