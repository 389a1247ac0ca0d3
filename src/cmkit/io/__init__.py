"""Files in and out, below everything else: atomic writes, safe weight files, hub ids and image decoding."""
