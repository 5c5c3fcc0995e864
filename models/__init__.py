"""Deployable models whose attention runs on tuned block-sparse layouts.

This layer sits between the kernels and the tuner: it imports `patterns` and `kernels` only, so a
deployment loads a tuned file and runs a model without the search stack (Optuna, Ray, SQLAlchemy).
"""
