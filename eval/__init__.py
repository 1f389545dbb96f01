"""Evaluation: pure metric functions on model outputs and embeddings; benchmark loaders live apart.

Imports nothing from ``facepoison``.
"""
