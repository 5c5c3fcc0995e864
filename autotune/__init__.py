"""Autotuner for block-sparse attention patterns in protein structure models."""
