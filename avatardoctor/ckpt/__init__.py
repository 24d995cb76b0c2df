"""Checkpoint verification: headers, index, reference, archives, hashes, skeletons."""
