"""Loading and saving: atomic writes, safe weight files, hub ids and checkpoint conversion."""
