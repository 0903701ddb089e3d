"""vecnest's HTTP service: settings, encoders, the inference queue, metrics and routes."""

__version__ = "0.1.0"

# before anything imports torch: libgomp reads its spin count when torch loads it
from service.cpu import limit_openmp_spin

limit_openmp_spin()
