# Fine-tune the CPU MLM checkpoint (config/bert_shakespeare_char_cpu.py) to tell who speaks a passage
# of Shakespeare: GLOUCESTER, DUKE VINCENTIO, MENENIUS, ROMEO or PETRUCHIO.
#   python prepare_data.py shakespeare_speakers
#   python bert.py config/bert_shakespeare_char_cpu.py     # pretrain first (the MLM checkpoint)
#   python bert.py config/bert_speakers_cpu.py
#   python bert.py config/bert_speakers_cpu.py --init_from=scratch --out_dir=out-bert-speakers-scratch
#   python sample.py --out_dir=out-bert-speakers-cpu --start="O Romeo, Romeo! wherefore art thou Romeo?"
# The model keys repeat the pretraining preset's, so that --init_from=scratch builds the same model.
# Measured val accuracy at iteration 300 (2-core CPU): majority class 0.240, from scratch 0.246, from
# the CPU MLM checkpoint 0.280 (train accuracy 0.434 vs 0.272); within one standard error (~0.033).

out_dir = "out-bert-speakers-cpu"
init_from = "out-bert-shakespeare-char-cpu"
eval_interval = 50
eval_iters = 20  # x batch_size 16 = 320 >= the 175 val speeches: every evaluation scores all of them
log_interval = 50
always_save_checkpoint = False  # keep the iteration with the best val loss

task = "classify"
dataset = "shakespeare_speakers"
gradient_accumulation_steps = 1
batch_size = 16
block_size = 64  # the pretrained model's positions: speeches are cut to their first 62 characters

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.1  # 701 training speeches: fine-tuning overfits quickly without it

learning_rate = 3e-4
max_iters = 300  # ~7 epochs of 701 speeches
lr_decay_iters = 300
min_lr = 3e-5
beta2 = 0.99
weight_decay = 0.01
warmup_iters = 30

device = "cpu"
compile = False
