"""Text: the BPE tokenizer (tokenizer.py), caption parsing and caption blending."""
