"""The network listener `broker serve` runs: what every HTTP connection is held to, whatever the route."""
