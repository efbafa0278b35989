"""Reading the broker's configuration and policy files (the only I/O around the pure policy engine)."""
