"""Agents and their keys: create, enable or disable, issue and revoke, and the admins' pages."""
