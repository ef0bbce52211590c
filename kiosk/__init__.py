"""Patient and cashier UI server."""
