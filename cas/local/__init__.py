"""The local cache of one host: its parts (objects, refs, snapshots, the chunk index) and their checks."""
