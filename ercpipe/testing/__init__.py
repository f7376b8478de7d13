"""Test and benchmark support, not pipeline code: nothing in ercpipe's rules, scripts or library imports it.

* reference_sdt_vega: the eager reference of the SDT / SDT-VEGA forward pass (`reference_forward`),
  against which tests/test_model.py and bench/bench_train.py check the library model;
* tiny_models: `write_tiny_roberta`, a small random RoBERTa + BPE tokenizer saved as a model directory.

The submodules import torch (and transformers / tokenizers when called); this package file imports nothing.
"""
