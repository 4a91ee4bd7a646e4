"""OpenID Connect relying party: discovery, the code flow with PKCE, ID-token validation, logout."""
