"""hsid: home-security intelligence daemon."""
