# A baby Llama on tiny Shakespeare, character level: config/shakespeare_char.py's GPT (6 layers,
# 6 heads, 384 wide, 256 characters of context) rebuilt as a Llama, for a side-by-side comparison.
#   python llama.py config/llama_shakespeare_char.py
#   python sample.py --out_dir=out-llama-shakespeare-char

out_dir = "out-llama-shakespeare-char"
eval_interval = 250  # the model overfits this small text, so we watch val loss often
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # keep only the best-val-loss checkpoint

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # 256 characters of context

n_layer = 6
n_head = 6
n_kv_head = 6  # multi-head attention, like the GPT it is compared with (try 2 or 3 for GQA)
n_embd = 384
multiple_of = 256  # SwiGLU width 2/3 * 4 * 384 = 1024: three 384x1024 matrices, the GPT's MLP parameters
dropout = 0.2  # a small dataset: regularise

learning_rate = 1e-3  # small models tolerate a higher learning rate
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99  # few tokens per step, so average the second moment over fewer steps
warmup_iters = 100
