"""Run directories: what state each run was left in, `mixtrain report`, and its figures."""
