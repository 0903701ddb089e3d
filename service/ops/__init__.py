"""The use cases behind the routes, one module per resource; each takes the `Engine`."""
