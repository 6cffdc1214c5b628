"""Hugging Face causal LMs as base models: the source options (`options`, torch-free), loading and the
verbatim data bundle (`models`), and GPU sizing of a trial (`memory`).

Nothing is imported here, so that `tinymem.hf.options` stays importable without torch.
"""
