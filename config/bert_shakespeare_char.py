# A character-level BERT pretrained as a masked language model on tiny Shakespeare, GPU scale
# (6 layers, 6 heads, 384 wide, 256 positions; 10.7M parameters).
#   python bert.py config/bert_shakespeare_char.py
#   python sample.py --out_dir=out-bert-shakespeare-char --start="To be, or not to b[MASK]"
# then fine-tune it to tell speakers apart: python bert.py config/bert_speakers.py
# Not yet measured on a GPU (this preset was written on a CPU-only machine); see the README.

out_dir = "out-bert-shakespeare-char"
eval_interval = 250
eval_iters = 200
log_interval = 10
always_save_checkpoint = False

task = "mlm"
dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # [CLS] + 254 characters + [SEP]

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.1  # MLM sees each character in many masked variants, but 1 MB still overfits a 10M model

learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
weight_decay = 0.01
warmup_iters = 200  # post-norm blocks need a warmup
