"""What runs inside a TorchServe worker: the handler, request parsing and the serving settings. Every archive ships
this package whole, beside `training.inference`."""
