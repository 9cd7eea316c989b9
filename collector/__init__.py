"""The fleet's verdict collector (``edge-collector``, docs/fleet.md): server-side, installed with ``.[fleet]``.

Not part of the device: nothing under ``edge_agent`` imports it, and only it imports psycopg.
"""
