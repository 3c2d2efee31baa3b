"""Model files: tiny test models built on the spot, and fetching and listing real ones."""
