"""Serving benchmarks: a real TorchServe on loopback, measured over HTTP beside the model alone, in one run."""
