"""Generator architectures, checkpoint layouts, network interpolation and the model registry."""
