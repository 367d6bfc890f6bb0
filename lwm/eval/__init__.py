"""Evaluation: long-context inference (prefill + cached decoding) and needle-in-a-haystack tests."""
