"""UltraRes Stream: real-time ESRGAN-family super-resolution for traffic-camera video."""
__version__ = "0.1.0"
