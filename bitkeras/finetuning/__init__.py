"""Training: the HyperRule and the upstream recipe, schedules, data sources, tf.data pipelines,
the one training loop, checkpoints of a run, tf.distribute.
"""
