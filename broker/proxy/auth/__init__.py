"""Who is calling `/mcp`: verifiers that turn an Authorization header into an agent or a challenge."""
