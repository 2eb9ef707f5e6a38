"""Multi-angle powder-bed defect segmentation: synthetic data, preparation, training, quantization, archiving."""
