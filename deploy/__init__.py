"""Deployment material: the demo stack, and the configuration for running channelgate behind real servers."""
