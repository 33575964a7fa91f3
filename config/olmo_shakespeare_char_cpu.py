# The character-level Shakespeare OLMo shrunk to train on a laptop CPU in a few minutes: the same size
# as config/shakespeare_char_cpu.py's GPT and config/llama_shakespeare_char_cpu.py's Llama (4 layers,
# 4 heads, 128 wide, 64 characters), with OLMo 2's block.
# Measured on a 2-core CPU (seed 1337, one run each, on a heavily loaded machine): val loss 1.667 at
# iteration 2000 (llama.py's preset: 1.724); at 1000 iterations 1.728 with RoPE and 1.821 with ALiBi,
# which then improves to 1.805 on 4x longer sequences (README, benchmarks/compare_decoders.py).
#   python olmo.py config/olmo_shakespeare_char_cpu.py
#   python olmo.py config/olmo_shakespeare_char_cpu.py --pos_emb=alibi --out_dir=out-olmo-alibi-cpu
#   python sample.py --out_dir=out-olmo-shakespeare-char-cpu

out_dir = "out-olmo-shakespeare-char-cpu"
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
n_kv_head = 4  # multi-head attention, as in the Llama preset
n_embd = 128
multiple_of = 32  # SwiGLU width 2/3 * 512 = 341 -> 352, as in the Llama preset
block_type = "olmo2"
pos_emb = "rope"  # or 'alibi'
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"
compile = False  # compiling takes longer than this whole run saves
