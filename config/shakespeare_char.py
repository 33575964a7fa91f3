# A baby GPT on tiny Shakespeare, character level (nanoGPT's classic first run).
# Sized for one GPU: about 10.7M parameters, a few minutes on an A100-class card.
#   python gpt.py config/shakespeare_char.py
#   python sample.py --out_dir=out-shakespeare-char

out_dir = "out-shakespeare-char"
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
n_embd = 384
dropout = 0.2  # a small dataset: regularise

learning_rate = 1e-3  # small models tolerate a higher learning rate
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99  # few tokens per step, so average the second moment over fewer steps
warmup_iters = 100
