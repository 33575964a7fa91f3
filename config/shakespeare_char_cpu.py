# The character-level Shakespeare GPT shrunk to train on a laptop CPU in a couple of minutes
# (4 layers, 4 heads, 128 wide, 64 characters of context; 0.8M parameters).
#   python gpt.py config/shakespeare_char_cpu.py
#   python sample.py --out_dir=out-shakespeare-char-cpu
# Measured on a 2-core CPU: see the README's performance table (val loss about 1.78 at iteration 2000).

out_dir = "out-shakespeare-char-cpu"
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
n_embd = 128
dropout = 0.0  # too small and too briefly trained to overfit

# A tiny model trained briefly tolerates, and gains from, a high learning rate. Val loss at iteration
# 2000 on a 2-core CPU over seeds 1337/1338/1339: 1.907/1.877/1.894 with nanoGPT's 1e-3,
# 1.806/1.793/1.814 with 2e-3, 1.785/1.772/1.787 with 3e-3.
learning_rate = 3e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"
compile = False  # compiling takes longer than this whole run saves
