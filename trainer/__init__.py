"""Training: tag semantics, encoders, quantizers, losses, methods and the Ray Train loop."""
