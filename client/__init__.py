"""Factory client for the defect detection service: `DefectClient(url).predict([a0, a1, a2])`, A/B routing
(weighted and sticky per layer, or shadow) and folder batches. Command line: `python -m client --help`."""

from client.ab import ABClient, WeightedSplit
from client.client import DefectClient, Prediction, ServiceError

__all__ = ["ABClient", "DefectClient", "Prediction", "ServiceError", "WeightedSplit"]
