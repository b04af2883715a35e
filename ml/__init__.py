"""Machine learning: features, the ensemble classifier, the model registry."""
