# Fine-tune SmolLM2-135M (Hugging Face's 135M-parameter Llama-architecture model, trained on 2T tokens)
# on tiny Shakespeare, tokenized with SmolLM2's own tokenizer. Three steps on a machine with internet:
#   python -c "import llama; print(llama.download_hf_checkpoint('HuggingFaceTB/SmolLM2-135M'))"   # prints its folder
#   python prepare_data.py shakespeare_char && python prepare_data.py shakespeare_smollm2 \
#       --input=data/shakespeare_char/input.txt --tokenizer=<the folder printed above>
#   python llama.py config/finetune_llama_shakespeare.py
#   python sample.py --out_dir=out-shakespeare-smollm2 --start="ROMEO:" --dtype=bfloat16
# (init_from may also be a local folder holding the model; the dataset must then be prepared with that
# folder's tokenizer.json, as llama.py checks.)
#
# Not measured: the machine this repository is developed on cannot download the weights, so this
# preset's loss and time are unknown, and its settings are a starting point, not a tuned result.
# Expect the pretrained model to start near its own loss on Shakespeare (it has read much of it) and
# to improve within the first epoch; watch val loss for overfitting after that.

out_dir = "out-shakespeare-smollm2"
eval_interval = 10
eval_iters = 20
log_interval = 1
always_save_checkpoint = False  # keep only the best checkpoint: val loss rises once it overfits

dataset = "shakespeare_smollm2"
init_from = "HuggingFaceTB/SmolLM2-135M"  # downloaded on first use into ~/.cache/single-file-lms

# 4 x 512 x 16 = 32,768 tokens per step. SmolLM2's tokenizer turns tiny Shakespeare into roughly
# 300K tokens, so one epoch is about 9 steps. On a CPU, lower gradient_accumulation_steps (each step
# costs ~6 x 135M FLOPs per token: minutes per step at 32K tokens).
block_size = 512  # SmolLM2-135M reads up to 8192 tokens; 512 is plenty for verse and fits memory
batch_size = 4
gradient_accumulation_steps = 16
max_iters = 40
dropout = 0.0  # SmolLM2 was trained without dropout

# Fine-tuning: a small learning rate with a short warmup, decayed to a tenth, so the pretrained
# weights are adjusted rather than overwritten.
learning_rate = 5e-5
warmup_iters = 4
lr_decay_iters = 40
min_lr = 5e-6
weight_decay = 0.0
