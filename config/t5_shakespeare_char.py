# T5's span corruption on tiny Shakespeare's characters at GPU scale: t5-small's width with 4 + 4
# layers and the v1.1 feed-forward (37.9M parameters), T5's own input length of 512 (windows of
# 568 characters, 85 dropped in 28 spans, targets of 114 tokens), bfloat16 and torch.compile.
#   python t5.py config/t5_shakespeare_char.py
#   python sample.py --out_dir=out-t5-shakespeare-char --start="ROMEO: But <extra_id_0> what light" --temperature=0 --num_samples=1
# Not measured yet: no GPU was available while this preset was written.

out_dir = "out-t5-shakespeare-char"
eval_interval = 250
eval_iters = 20
log_interval = 10

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 512
target_block_size = 128  # 114 needed
noise_density = 0.15
mean_noise_span_length = 3.0

n_layer = 4
n_decoder_layer = 4
n_head = 8
n_embd = 512
head_dim = 64
n_ff = 2048
feed_forward = "gated-gelu"  # T5 v1.1
tie_embeddings = False
dropout = 0.0  # T5 v1.1 pre-trained without dropout

learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
warmup_iters = 200
beta2 = 0.99
