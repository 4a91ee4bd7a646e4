"""Relational storage: the engine (``database``), migrations, and one small repository per table family.

Repositories take an ``AsyncEngine``; every write method also accepts ``conn=`` so a state change and its
access-log record commit in one transaction (``Database.begin()``).
"""
