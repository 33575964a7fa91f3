"""Shared pytest set-up: make the repository importable and tiktoken work offline.

The tests import the model scripts as modules (`import gpt`), so the repository root goes on sys.path.
On machines without internet, GPT-2's BPE files sit in ../shared/data/tiktoken_cache; pointing
TIKTOKEN_CACHE_DIR there lets `tiktoken.get_encoding("gpt2")` load them instead of downloading.
"""
import os
import sys

# One OpenMP thread per process, set before torch is imported. The suite's models are tiny, so a
# second thread buys little; but when processes overlap (a training subprocess while pytest's own
# threads still spin, or torchrun's two ranks) oversubscribed spinning threads can make each step
# tens of times slower on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

_tiktoken_cache = os.path.join(SHARED_DATA, "tiktoken_cache")
if "TIKTOKEN_CACHE_DIR" not in os.environ and os.path.isdir(_tiktoken_cache):
    os.environ["TIKTOKEN_CACHE_DIR"] = _tiktoken_cache
