"""Model files: tiny test models built on the spot, and fetching real ones."""
