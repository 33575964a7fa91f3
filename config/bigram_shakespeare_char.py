# Train a character-level bigram on tiny Shakespeare, on a laptop CPU.
# python bigram.py config/bigram_shakespeare_char.py, then python sample.py --out_dir=out-bigram
#
# Measured on 2 CPU cores (torch 2.13): the loss starts at ln(65) = 4.17 and ends at train 2.46,
# val 2.49 (step 2000; estimates over eval_iters batches), best val 2.476 at step 1250. That is the
# bigram's ceiling: counting the training split's bigrams gives 2.452 on train and 2.48-2.49 on val,
# so more iterations cannot help — only more context can (gpt.py).
# Time: 3.8 s with OMP_NUM_THREADS=1, but 35 s with PyTorch's default of one thread per core while
# other jobs shared the two cores: ops this small gain nothing from threads that wait for each other.
# On a busy or small machine, run it as: OMP_NUM_THREADS=1 python bigram.py config/bigram_shakespeare_char.py

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
