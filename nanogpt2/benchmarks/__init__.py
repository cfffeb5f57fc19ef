"""
Benchmarks of library parts that `bench.py` runs (and that can be called on their own): decoding against
transformers' `generate`. Library modules hold no benchmark code; these import the library, never the reverse.
"""
