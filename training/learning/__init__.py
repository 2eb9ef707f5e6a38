"""Learning: the dataset and its augmentation (lighting-consistent symmetries), losses and metrics, the training
loop, evaluation (threshold choice) and quantization to int8."""
