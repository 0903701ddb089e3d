"""vecnest's HTTP service: settings, encoders, the inference queue, metrics and routes."""

__version__ = "0.1.0"
