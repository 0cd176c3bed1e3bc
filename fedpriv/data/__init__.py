"""Data sets (standard archives and an embedded set), normalisation constants and partitioning."""
