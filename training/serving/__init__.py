"""Serving from the host: TorchServe archives of the variants and the TorchServe launcher. What runs inside a worker
is `handler/` and `training.inference`, both packed whole into every archive."""
