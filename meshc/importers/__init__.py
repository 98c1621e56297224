"""`meshc import`: existing mesh configuration -> .mesh (one module per source mesh)."""
