# The character-level Shakespeare Llama shrunk to train on a laptop CPU in a few minutes: the same
# size as config/shakespeare_char_cpu.py's GPT (4 layers, 4 heads, 128 wide, 64 characters).
# Measured on a 2-core CPU: val loss about 1.71 at iteration 2000 (the GPT preset: about 1.78).
#   python llama.py config/llama_shakespeare_char_cpu.py
#   python sample.py --out_dir=out-llama-shakespeare-char-cpu

out_dir = "out-llama-shakespeare-char-cpu"
eval_interval = 250
eval_iters = 20  # a rougher but much cheaper loss estimate
log_interval = 50
always_save_checkpoint = False

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
# Multi-head attention. Grouped-query attention (n_kv_head=2) measured the same speed at this size
# and a slightly worse val loss at iteration 2000 over two seeds (1.734 vs 1.713 on average): GQA pays
# off in memory for long contexts and big models, not here. Try --n_kv_head=2 or 1 to see it run.
n_kv_head = 4
n_embd = 128
multiple_of = 32  # SwiGLU width 2/3 * 512 = 341 -> 352, so its three matrices match the GPT's MLP
dropout = 0.0  # too small and too briefly trained to overfit

# Unlike the GPT preset (3e-3), this model does best at nanoGPT's 1e-3: 2e-3 gave 1.726/1.720 at
# iteration 2000 (seeds 1337/1338) against 1.724/1.702 here.
learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"
compile = False  # compiling takes longer than this whole run saves
