"""Who is calling: callers, roles and scopes, the keys as configured. No web framework."""
