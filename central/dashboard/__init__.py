"""Staff dashboard and REST API of the central service."""
