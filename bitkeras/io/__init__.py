"""Weights and modules in and out: released .npz checkpoints, the weights cache and downloads,
presets, TF-Hub modules in, TF-Hub style SavedModels out.
"""
