# A Llama of GPT-2 small's size pretrained on FineWeb-Edu's 10B tokens with llama.py: the same data,
# tokens per step, schedule and budget as config/gpt2_124m.py, so that the two runs' val losses compare
# the architectures (RMSNorm, RoPE, SwiGLU, no biases) and nothing else. Expected: nothing measured here;
# Llama-style models of this size usually end a little below GPT-2's loss for the same tokens.
#
# Parameters: 123,587,328 with GPT-2's vocabulary padded to 50,304 (GPT-2 small: 124,475,904). To match
# GPT-2's count it keeps 12 key/value heads (plain multi-head attention) and ties the output layer to the
# embedding as GPT-2 does; llama.py's defaults (4 key/value heads, untied) would give 152,783,616.
# The SwiGLU width is 2048 (2/3 x 4 x 768 rounded up to a multiple of 256).
#
# Data: as config/gpt2_124m.py (python prepare_data.py fineweb_edu --shards=2 for a first 100M tokens).
# One node, 8 GPUs:
#   torchrun --standalone --nproc_per_node=8 llama.py config/llama_124m.py
# Two nodes of 8 GPUs (on each node, --node_rank=0 and 1, HOST the address of node 0):
#   torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
#       llama.py config/llama_124m.py --batch_size=32 --gradient_accumulation_steps=16

out_dir = "out-llama-124m"
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
n_kv_head = 12
n_embd = 768
tie_embeddings = True
dropout = 0.0

learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 700
max_iters = 19073
lr_decay_iters = 19073
weight_decay = 0.1
grad_clip = 1.0
beta2 = 0.95
compile = True
