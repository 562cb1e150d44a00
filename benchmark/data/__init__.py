"""The data room: the dataset registry (``datasets/``) and the batch streams that feed a run.

``images`` streams device-resident image tensors, ``points`` point clouds, ``files`` file-backed
datasets through a DataLoader.
"""
