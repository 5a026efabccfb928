"""Command-line entry points: thin argument parsing over the API's config objects."""
