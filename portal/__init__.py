"""Control plane: accounts, catalog, applications, reviews, decisions and agreements."""
