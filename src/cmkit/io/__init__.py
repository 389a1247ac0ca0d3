"""Files in and out, below everything else: atomic writes, safe weight files, hub ids, image decoding and
streamed ``.npz`` reads."""
