"""Approvers' single sign-on: the identity provider client (`provider`), who a verified token
speaks for (`identity`), and provider access tokens on the decisions API (`api_tokens`). The
inbox's sign-on pages are broker.channels.web.oidc; the settings are broker.config.sso."""
