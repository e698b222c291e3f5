"""The models: BiT's layers, the architecture as data, backbone and classifier (keras-hub
roles), inference helpers.
"""
