"""Facts about requests and where they go: the request record, metrics, logging set-up."""
