# config/olmo_shakespeare_char_cpu.py's OLMo turned into a mixture of experts (OLMoE's block: pre-norm
# RMSNorm and QK-norm), at equal active parameters: each block's SwiGLU of width 352 becomes 8 experts
# of width 176, of which the router picks 2 per token, so a token runs through 2 * 176 = 352 hidden
# channels, as in the dense preset. Parameters: 2.45M in all, 0.83M active per token (the dense preset:
# 0.82M; the 4096 extra are the routers).
# Measured on a 2-core CPU (seed 1337, one run): val loss 1.798 at iteration 1000 (the dense preset:
# 1.785; dense with OLMoE's block: 1.776) and 1.673 at 2000 (dense: 1.667), at 1.49x the dense preset's
# time per step; the expert load stays unbalanced (docs/experts.png). README: "olmo.py:
# mixture of experts (OLMoE)".
#   python olmo.py config/olmoe_shakespeare_char_cpu.py
#   python plot.py --experts out-olmoe-shakespeare-char-cpu      # -> experts.png: the load of each expert
#   python sample.py --out_dir=out-olmoe-shakespeare-char-cpu

out_dir = "out-olmoe-shakespeare-char-cpu"
eval_interval = 250
eval_iters = 20  # a rougher but much cheaper loss estimate
log_interval = 50
always_save_checkpoint = False

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_kv_head = 4
n_embd = 128
multiple_of = 32  # the dense width 2/3 * 512 = 341 -> 352; each expert gets 352 / n_experts_per_token
block_type = "olmoe"
n_experts = 8
n_experts_per_token = 2
norm_topk_prob = False  # as OLMoE
router_aux_loss_coef = 0.01  # OLMoE's weights for the load-balancing loss and the z-loss
router_z_loss_coef = 0.001
pos_emb = "rope"
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"
compile = False  # compiling takes longer than this whole run saves
