# Train a character-level bigram on tiny Shakespeare, on a laptop CPU.
# python bigram.py config/bigram_shakespeare_char.py, then python sample.py --out_dir=out-bigram
#
# Measured (2 CPU cores, torch 2.13, shared with other jobs): 2000 iterations in ~15-40 s,
# final train loss 2.46, val loss 2.49 (estimates over eval_iters batches). That is the bigram's
# ceiling: the count-based bigram of the training split scores 2.452 on train and 2.48-2.49 on val,
# so more iterations cannot help — only more context can (gpt.py). The start is ln(65) = 4.17.

out_dir = "out-bigram"
eval_interval = 250
eval_iters = 50
log_interval = 100
always_save_checkpoint = False  # keep the best val loss; the table barely overfits anyway

dataset = "shakespeare_char"
batch_size = 32
block_size = 8  # the bigram ignores context: 32 x 8 = 256 (character, next character) pairs per step

# One row per character, updated only where that character occurs: a high learning rate is safe,
# and the cosine decay to min_lr removes the batch-to-batch jitter at the end.
learning_rate = 1e-2
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-3
warmup_iters = 0
weight_decay = 0.0  # decay would pull rows towards uniform: smoothing this much data does not need

device = "auto"
compile = False  # compiling takes longer than this whole run on a CPU
