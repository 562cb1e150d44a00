"""The data room: the dataset registry (``datasets/``) and the batch streams that feed a run.

``stream`` is the contract every training stream keeps (``TrainStream``) and the (seed, epoch)
arithmetic they share; ``images`` streams device-resident image tensors, ``points`` point clouds,
``files`` the datasets of kind "files" through a DataLoader.
"""
