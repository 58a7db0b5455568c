"""The failover lab: see lab.py."""
