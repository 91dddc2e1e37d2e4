"""roomcast: a real-time chat and pub/sub server over WebSockets."""

__version__ = "0.1.0"

__all__ = ["__version__"]
