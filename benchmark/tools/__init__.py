"""Measuring tools, beside the product: ``perf`` (step cost, CPU or GPU) and ``gpu_check`` (the
checks and timings to run first on a lent card). Both are reached through ``python -m benchmark``.
"""
