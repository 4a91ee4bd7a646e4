"""The demo stack: a development OpenID provider (``idp``), three channel consoles (``consoles``), and ``run``."""
