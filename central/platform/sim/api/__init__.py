"""HTTP routers of the reference platform, one module per resource."""
