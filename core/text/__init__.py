"""Stage 1, prompt → text: the tokenizer, A1111 prompt weighting and chunking, the CLIP text encoders."""
