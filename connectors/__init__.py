"""Connectors: how channelgate presents an agent to each channel console, and how it ends their access there."""
