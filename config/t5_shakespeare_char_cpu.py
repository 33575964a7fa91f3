# T5's own pre-training objective, span corruption, on tiny Shakespeare's characters, on a laptop CPU:
# a small T5 (2 + 2 layers, 128 wide, 0.93M parameters) reads 70-character windows with 10 characters
# dropped in 3 spans, each span replaced by a sentinel, and writes the dropped characters.
#   python t5.py config/t5_shakespeare_char_cpu.py      # prepares data/shakespeare_char on first use
#   python sample.py --out_dir=out-t5-shakespeare-char-cpu --start="ROMEO: But <extra_id_0> what light" --temperature=0 --num_samples=1
# (a prompt may have up to block_size - 1 = 63 characters: the encoder's input ends with </s>)
#
# Measured (2-core CPU shared with other jobs, one OpenMP thread, float32, no compile): val loss 6.43
# at iteration 0, 2.39 at 250, 2.26 at 500, 2.21 at 1000, 2.18 at 1500; the accuracy on the dropped
# characters (teacher-forced, val) 1.6% -> 10.7% (250) -> 20.0% (500) -> 18.3% (1500). 402 s for the
# 1500 iterations, evaluations included (median 218 ms per iteration, 11,500 tokens/s). The loss is per
# target token, sentinels and </s> included (14 tokens per target). The model learns the target's
# format first (which sentinel comes next, where </s> goes), then, between iterations 250 and 500, to
# read the characters around a sentinel in the encoder; at this size and length it is still a weak speller.
# Longer windows learn more slowly: block_size=128 (141-character windows, 7 spans) stayed at 10-12%
# accuracy after 500 iterations with learning rates 1e-3 and 3e-3 alike (val loss 2.48 and 2.54).

out_dir = "out-t5-shakespeare-char-cpu"
eval_interval = 250
eval_iters = 10
log_interval = 25
always_save_checkpoint = False

dataset = "shakespeare_char"  # any text dataset trains span corruption; "numbers" trains translation
gradient_accumulation_steps = 1
batch_size = 32
block_size = 64  # the encoder's input: 70-character windows become 70 - 10 + 3 + 1 (</s>) = 64 tokens
target_block_size = 16  # the target: 3 sentinels + 10 dropped characters + </s> = 14 tokens
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
max_iters = 1500
lr_decay_iters = 1500
min_lr = 1e-4
warmup_iters = 50
beta2 = 0.99

device = "cpu"
compile = False  # compiling takes longer than this whole run saves
