"""The inference contract: three light images -> model input -> probabilities -> the answer. ModelConfig, image
decoding and checks, preprocessing, model build, tiled inference, the answer, the served variants. Every archive
ships this package whole; it imports nothing from training, evaluation or serving."""
