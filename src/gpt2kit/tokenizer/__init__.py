"""GPT-2's byte-level BPE tokenizers: GPT2Tokenizer (pure Python), GPT2TokenizerFast (tiktoken), AutoTokenizer.

Only re-exports; the modules are: bpe (the readable engine), fast (the tiktoken engine), base (the call
surface both share), batch_encoding (what a call returns), alignment (where each token came from: words,
characters, texts), options (what a call's keyword arguments mean), truncation (cutting a text or a pair to
max_length, the slow and the fast way), slow (GPT2Tokenizer), files (reading and writing tokenizer folders),
bpe_trainer (learning a vocabulary: train_new_from_iterator), pretokenize (GPT-2's regex as the Rust engines
apply it), chat, auto.
"""

from gpt2kit.tokenizer.auto import AutoTokenizer
from gpt2kit.tokenizer.batch_encoding import BatchEncoding
from gpt2kit.tokenizer.fast import GPT2TokenizerFast
from gpt2kit.tokenizer.files import AddedToken
from gpt2kit.tokenizer.slow import GPT2Tokenizer

__all__ = ["AddedToken", "AutoTokenizer", "BatchEncoding", "GPT2Tokenizer", "GPT2TokenizerFast"]
