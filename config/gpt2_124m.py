# GPT-2 small (124M) pretrained from scratch on 10B tokens of FineWeb-Edu: the reproduction of
# build-nanogpt (and llm.c), with this repository's gpt.py.
#
# Expected (not measured here): val loss about 3.3 on FineWeb-Edu's held-out shard and HellaSwag
# acc_norm about 0.30 after 10B tokens; OpenAI's GPT-2 124M scores 0.2955. Cost: llm.c reports about
# 90 minutes on one node of 8x A100 80GB SXM (karpathy/llm.c discussion #481); PyTorch runs such as
# build-nanogpt's are slower, roughly 1.5-2 hours on the same node (approximate), so plan on about
# 12-16 A100-hours; one GPU takes 8 times as long.
#
# Parameters: 124,475,904 (gpt.py pads GPT-2's 50,257-token vocabulary to 50,304; with 50,257 it is
# OpenAI's 124,439,808). Tokens per step: 64 sequences x 1024 tokens x 8 accumulation steps = 524,288
# (about 0.5M, GPT-3 small's batch), on 8 GPUs: 8 processes x 64 x 1024, gradient accumulation 8 in
# all (the training scripts divide gradient_accumulation_steps among the processes).
#
# Data: the first run prepares data/fineweb_edu: 14 parquet files (28 GB) downloaded and tokenized into
# 100M-token shards, the first one held out as val. To try it on 100M training tokens first:
#   python prepare_data.py fineweb_edu --shards=2      # the val shard and one train shard
# (a later run with other caps, or none, continues from the shards already there).
#
# One node, 8 GPUs (8 processes x 64 x 1024 tokens, 1 micro-step each: gradient_accumulation_steps
# counts micro-steps over all processes, so 8 here means 1 per GPU):
#   torchrun --standalone --nproc_per_node=8 gpt.py config/gpt2_124m.py
# Two nodes of 8 GPUs: 16 processes, so give each 32 sequences and 16 micro-steps in all for the same
# 524,288 tokens; run on each node, with --node_rank=0 and 1, HOST the address of node 0:
#   torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
#       gpt.py config/gpt2_124m.py --batch_size=32 --gradient_accumulation_steps=16
# One GPU: python gpt.py config/gpt2_124m.py (8 micro-steps of 64 sequences; lower batch_size and raise
# gradient_accumulation_steps as much for a smaller GPU, keeping their product 512).

out_dir = "out-gpt2-124m"
eval_interval = 250
eval_iters = 20  # 20 x 64 x 1024 = 1.3M val tokens per estimate
log_interval = 10
hellaswag_interval = 250  # HellaSwag acc_norm on 500 fixed validation examples at every evaluation
sample_interval = 1000  # a greedy sample every 4th evaluation, to read what the loss means
always_save_checkpoint = False

dataset = "fineweb_edu"
gradient_accumulation_steps = 8
batch_size = 64
block_size = 1024

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = True

learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 700  # build-nanogpt's 715: 375M tokens, as GPT-3's paper warms up
max_iters = 19073  # 19,073 x 524,288 = 10.0B tokens: one pass over sample-10BT
lr_decay_iters = 19073
weight_decay = 0.1
grad_clip = 1.0
beta2 = 0.95
compile = True
