"""
Benchmarks of library parts that `bench.py` runs (and that can be called on their own): decoding against
transformers' `generate` (decode.py), BPE encoding against tiktoken (tokenizer.py). Library modules hold no
benchmark code; these import the library, never the reverse (tests/test_dependencies.py checks it).
"""
