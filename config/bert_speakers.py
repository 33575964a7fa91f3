# Fine-tune the GPU MLM checkpoint (config/bert_shakespeare_char.py) to tell who speaks a passage of
# Shakespeare: GLOUCESTER, DUKE VINCENTIO, MENENIUS, ROMEO or PETRUCHIO.
#   python prepare_data.py shakespeare_speakers
#   python bert.py config/bert_shakespeare_char.py     # pretrain first (the MLM checkpoint)
#   python bert.py config/bert_speakers.py
#   python bert.py config/bert_speakers.py --init_from=scratch --out_dir=out-bert-speakers-scratch
# The model keys repeat the pretraining preset's, so that --init_from=scratch builds the same model.
# Not yet measured on a GPU (written on a CPU-only machine).

out_dir = "out-bert-speakers"
init_from = "out-bert-shakespeare-char"
eval_interval = 50
eval_iters = 10  # x batch_size 32 = 320 >= the 175 val speeches: every evaluation scores all of them
log_interval = 10
always_save_checkpoint = False  # keep the iteration with the best val loss

task = "classify"
dataset = "shakespeare_speakers"
gradient_accumulation_steps = 1
batch_size = 32
block_size = 256  # nearly every speech fits whole

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.1

learning_rate = 1e-4
max_iters = 300  # ~14 epochs of 701 speeches
lr_decay_iters = 300
min_lr = 1e-5
beta2 = 0.99
weight_decay = 0.01
warmup_iters = 30
