# A baby OLMo 2 on tiny Shakespeare, character level: config/llama_shakespeare_char.py's Llama (6 layers,
# 6 heads, 384 wide, 256 characters of context) rebuilt with OLMo 2's block, for a side-by-side comparison.
#   python olmo.py config/olmo_shakespeare_char.py
#   python olmo.py config/olmo_shakespeare_char.py --pos_emb=alibi --out_dir=out-olmo-alibi-shakespeare-char
#   python sample.py --out_dir=out-olmo-shakespeare-char

out_dir = "out-olmo-shakespeare-char"
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
n_kv_head = 6  # multi-head attention, like the GPT and Llama it is compared with
n_embd = 384
multiple_of = 256  # SwiGLU width 2/3 * 4 * 384 = 1024, as in the Llama preset
block_type = "olmo2"
pos_emb = "rope"  # or 'alibi'
dropout = 0.2  # a small dataset: regularise

learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99  # few tokens per step, so average the second moment over fewer steps
warmup_iters = 100
