"""Recognition models and training: backbones, heads, a training loop over any Dataset.

Imports nothing from ``facepoison``: the crafting package composes this one, never the reverse.
"""
