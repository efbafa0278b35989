"""The agent-facing side: MCP endpoints, policy enforcement and forwarding to upstreams."""
