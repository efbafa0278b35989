"""Checks a tools/call passes on its way through the gateway, each in a module of its own."""
