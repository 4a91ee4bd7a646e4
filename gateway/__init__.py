"""channelgate: one identity and access gateway in front of every contact-center channel console."""

__version__ = "0.1.0"
