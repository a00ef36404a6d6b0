# Rho-1 weighted MTP at ~1B parameters with 4 heads (Gloeckle et al. 2024 used n = 4 for
# code), on one 8-GPU node:
#   python data.py --tokenizer=cl100k_base --data_dir=data_cache/tinycode-cl100k
#   torchrun --standalone --nproc_per_node=8 train.py config/tiny_ref.py \
#       --tokenizer=cl100k_base --data_dir=data_cache/tinycode-cl100k --out_dir=out/ref_cl100k
#   torchrun --standalone --nproc_per_node=8 train.py config/rho1_1b.py
# The data is tinycode until the real code sources land (CodeContests, MBPP); the model,
# batch and schedule are the real setting's.
# 16 rows * 8 micro-batches = 128 samples per step, over 8 GPUs: 1 micro-batch each.
out_dir = "out/rho1_1b"
data_dir = "data_cache/tinycode-cl100k"
tokenizer = "cl100k_base"
weighting = "rho1"
ref_init_from = "out/ref_cl100k"
block_size = 1024
# 22 blocks of width 2048 (18 trunk + 4 heads), GQA 32/4, SwiGLU 5632: 1.17B parameters
# without embeddings, 1.38B with the (untied) cl100k embedding and unembedding
n_layer = 22
n_future = 4
n_head = 32
n_kv_head = 4
d_model = 2048
d_ff = 5632
tie_embeddings = False
batch_size = 16
gradient_accumulation_steps = 8
max_iters = 20000
lr_decay_iters = 20000
warmup_iters = 500
learning_rate = 3e-4
min_lr = 3e-5
eval_interval = 500
log_interval = 10
dtype = "bfloat16"
compile = True
