"""The fine-tuning path end to end on the numbers task: prepare_data.py --tokenizer=<T5 dir> on a
pairs file, t5.py --init_from=<T5 dir>, exact match on held-out numbers, sample.py on the result.

    python benchmarks/finetune_t5_numbers.py                     # 2,000 iterations, ~3 minutes on 2 CPU cores
    python benchmarks/finetune_t5_numbers.py --max_iters=1000

No pretrained T5 can be downloaded where this was written, so the "pretrained" model is a stand-in:
a random transformers.T5ForConditionalGeneration of the CPU preset's shape (config/t5_numbers_cpu.py:
2 + 2 layers, 128 wide, ReLU, tied embeddings; 0.93M parameters plus the vocabulary's rows) saved with
save_pretrained beside a SentencePiece model (T5's special ids) trained here on the pairs' text. It
measures that the path trains a real task (SentencePiece pieces in, pieces out, the pair separators
past the vocabulary, T5's pad-as-start), not what pretraining transfers. Needs transformers and
sentencepiece. Prints exact match at each evaluation (greedy, on the held-out pairs) and a sample.
"""
import argparse
import io
import os
import random
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import prepare_data  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max_iters", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=22_000, help="the last 10%% are held out (val)")
    parser.add_argument("--vocab_size", type=int, default=128, help="of the SentencePiece model")
    parser.add_argument("--workdir", default=None, help="default: a new temporary directory")
    args = parser.parse_args()
    import sentencepiece
    import torch
    import transformers

    workdir = args.workdir or tempfile.mkdtemp(prefix="finetune_t5_numbers_")
    os.makedirs(workdir, exist_ok=True)
    numbers = random.Random(0).sample(range(prepare_data.NUMBERS_MAX + 1), args.pairs)  # all distinct
    pairs = [(f"{n:,}", prepare_data.number_to_words(n)) for n in numbers]
    with open(os.path.join(workdir, "pairs.tsv"), "w", encoding="utf-8") as f:
        f.writelines(f"{a}\t{b}\n" for a, b in pairs)

    model_dir = os.path.join(workdir, "stand-in-t5")
    spiece = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(f"{a} {b}" for a, b in pairs), model_writer=spiece, vocab_size=args.vocab_size,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram", minloglevel=2)
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=args.vocab_size, d_model=128, d_kv=32, d_ff=512, num_layers=2,
                                   num_heads=4, dropout_rate=0.0, feed_forward_proj="relu", tie_word_embeddings=True,
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(model_dir)
    with open(os.path.join(model_dir, "spiece.model"), "wb") as f:
        f.write(spiece.getvalue())

    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}

    def run(*command):
        print("$", " ".join(command), flush=True)
        subprocess.run([sys.executable, *command], cwd=workdir, env=env, check=True)

    run(os.path.join(REPO, "prepare_data.py"), "numbers_sp", "--input=pairs.tsv", f"--tokenizer={model_dir}")
    # The CPU preset's optimisation settings; block sizes fit "1,000,000" and the longest words in pieces.
    run(os.path.join(REPO, "t5.py"), os.path.join(REPO, "config", "t5_numbers_cpu.py"), f"--init_from={model_dir}",
        "--dataset=numbers_sp", "--out_dir=out-finetune", f"--max_iters={args.max_iters}",
        f"--lr_decay_iters={args.max_iters}", "--block_size=24", "--target_block_size=32", "--eval_beam_size=0")
    run(os.path.join(REPO, "sample.py"), "--out_dir=out-finetune", "--start=123,456", "--temperature=0",
        "--num_samples=1", "--device=cpu")


if __name__ == "__main__":
    main()
