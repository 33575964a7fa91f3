# T5 on the numbers task at GPU scale: t5-small's width with 4 + 4 layers (about 26M parameters),
# bfloat16 and torch.compile. Not measured yet: no GPU was available while t5.py was written.
#   python t5.py config/t5_numbers.py
#   python sample.py --out_dir=out-t5-numbers --start=123456 --beam_size=4

out_dir = "out-t5-numbers"
eval_interval = 500
eval_iters = 20
eval_exact_match = 2000
eval_beam_size = 4
log_interval = 50

dataset = "numbers"
gradient_accumulation_steps = 1
batch_size = 256
block_size = 16
target_block_size = 16

n_layer = 4
n_decoder_layer = 4
n_head = 8
n_embd = 512
head_dim = 64
n_ff = 2048
feed_forward = "gated-gelu"  # T5 v1.1
tie_embeddings = False
dropout = 0.0

learning_rate = 1e-3
max_iters = 3000
lr_decay_iters = 3000
min_lr = 1e-4
warmup_iters = 100
beta2 = 0.99
