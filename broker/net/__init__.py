"""Network plumbing shared by the proxy and the channels: the listener `broker serve` runs (what every
HTTP connection is held to, whatever the route), and an identity provider's keys (`jwks`) and token
introspection (`introspection`), which the agents' token check (broker/proxy/auth) and the approvers'
single sign-on (broker/channels/sso) both use, so neither package imports the other."""
