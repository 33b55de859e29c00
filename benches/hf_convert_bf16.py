"""Runs llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist) with one
change: the benchmark checkpoint's tiny tokenizer is not in llama.cpp's table of known
pre-tokenizer hashes, so its pre-tokenizer is declared "glm4" (what real GLM-4 tokenizers
resolve to). Everything that costs time (reading, converting, writing) is llama.cpp's.

usage: python hf_convert_bf16.py LLAMA_CPP_DIR CHECKPOINT OUT.gguf
"""

import sys
from pathlib import Path

llama_cpp = Path(sys.argv[1])
sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]

import convert_hf_to_gguf  # noqa: E402
from conversion import base  # noqa: E402

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "glm4"
sys.argv = ["convert_hf_to_gguf.py", sys.argv[2], "--outtype", "bf16", "--outfile", sys.argv[3]]
convert_hf_to_gguf.main()
