# A small character-level BERT pretrained as a masked language model on tiny Shakespeare, sized to
# train on a laptop CPU in a few minutes (4 layers, 4 heads, 128 wide, 64 positions; 0.8M parameters).
#   python bert.py config/bert_shakespeare_char_cpu.py
#   python sample.py --out_dir=out-bert-shakespeare-char-cpu --start="To be, or not to b[MASK]"
# then fine-tune it to tell speakers apart: python bert.py config/bert_speakers_cpu.py
# Measured (2-core CPU, shared): val loss 2.997, val masked-token accuracy 0.242 at iteration 2000, still
# on the unigram plateau of small MLM runs (see the README's performance section): too short to be useful.

out_dir = "out-bert-shakespeare-char-cpu"
eval_interval = 250
eval_iters = 20
log_interval = 50
always_save_checkpoint = False

task = "mlm"
dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 16
block_size = 64  # [CLS] + 62 characters + [SEP]

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 2e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
weight_decay = 0.01
warmup_iters = 100

device = "cpu"
compile = False
