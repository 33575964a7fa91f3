# The character-level Shakespeare Llama shrunk to train on a laptop CPU in a few minutes: the same
# size as config/shakespeare_char_cpu.py's GPT (4 layers, 4 heads, 128 wide, 64 characters).
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
n_kv_head = 4
n_embd = 128
multiple_of = 32  # SwiGLU width 2/3 * 512 = 341 -> 352, so its three matrices match the GPT's MLP
dropout = 0.0  # too small and too briefly trained to overfit

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"
compile = False  # compiling takes longer than this whole run saves
