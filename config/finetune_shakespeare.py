# Fine-tune OpenAI's GPT-2 on tiny Shakespeare (GPT-2 tokens). Needs the GPT-2 weights: downloaded
# from the Hugging Face hub on first use, or point init_from at a local HF checkpoint directory.
#   python gpt.py config/finetune_shakespeare.py
#   python sample.py --out_dir=out-shakespeare

out_dir = "out-shakespeare"
eval_interval = 5
eval_iters = 40
log_interval = 1
always_save_checkpoint = False  # only keep a checkpoint when val loss improves

dataset = "shakespeare"
init_from = "gpt2-xl"  # the largest GPT-2 (1.5B); 'gpt2' (124M) fits smaller GPUs and CPUs

# 1 x 32 x 1024 = 32,768 tokens per step; tiny Shakespeare has ~300K tokens, so one epoch is ~9 steps.
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# Fine-tuning: a small constant learning rate, so the pretrained weights are nudged, not overwritten.
learning_rate = 3e-5
decay_lr = False
